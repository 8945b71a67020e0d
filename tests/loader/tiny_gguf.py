"""Writes tiny llama GGUF files the way llama.cpp's converter does, for loader tests.

Tensors are made in Hugging Face row order and Q/K rows are permuted as convert_hf_to_gguf does before
writing, so a correct loader hands back exactly `TinyTensor.stored`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType
HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 256, 512, 4, 2, 64, 32
# byte offsets of the fp16 scales in one block: random bytes elsewhere are valid quants, random scales are not
K_QUANT_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
K_QUANT_BLOCK_BYTES = {Q.Q2_K: 84, Q.Q3_K: 110, Q.Q4_K: 144, Q.Q5_K: 176, Q.Q6_K: 210}
LAYER_TENSORS = {  # llama.cpp name -> (Hugging Face name, torch shape)
    "attn_q": ("self_attn.q_proj", (HEADS * HEAD_DIM, HIDDEN)),
    "attn_k": ("self_attn.k_proj", (KV_HEADS * HEAD_DIM, HIDDEN)),
    "attn_v": ("self_attn.v_proj", (KV_HEADS * HEAD_DIM, HIDDEN)),
    "attn_output": ("self_attn.o_proj", (HIDDEN, HEADS * HEAD_DIM)),
    "ffn_gate": ("mlp.gate_proj", (FFN, HIDDEN)),
    "ffn_up": ("mlp.up_proj", (FFN, HIDDEN)),
    "ffn_down": ("mlp.down_proj", (HIDDEN, FFN)),
}


@dataclass
class TinyTensor:
    """One weight as the loader should return it: float values, or GGML blocks, in Hugging Face row order."""

    gguf_name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # in torch order
    stored: np.ndarray
    original: np.ndarray | None  # the floats that were quantized; None for random K-quant blocks


def write_tiny_llama(
    path: Path,
    layer_types: tuple[GGMLQuantizationType, ...] = (Q.F32,),
    embedding_type: GGMLQuantizationType = Q.Q8_0,
    output_type: GGMLQuantizationType | None = None,
    arch: str = "llama",
    metadata: dict[str, object] | None = None,
    replace: dict[str, np.ndarray | tuple[np.ndarray, GGMLQuantizationType] | None] | None = None,
) -> dict[str, TinyTensor]:
    """One layer per entry of `layer_types`, its matrices stored in that type; an untied head if output_type.

    `metadata` overrides keys given without the arch prefix (None removes one); `replace` swaps, adds or
    (with None) drops tensors by llama.cpp name. Returns the model's tensors by Hugging Face name.
    """
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": _make("token_embd.weight", (VOCAB, HIDDEN), embedding_type, rng),
               "model.norm.weight": _make("output_norm.weight", (HIDDEN,), Q.F32, rng)}
    if output_type is not None:
        tensors["lm_head.weight"] = _make("output.weight", (VOCAB, HIDDEN), output_type, rng)
    for layer, qtype in enumerate(layer_types):
        prefix, hf_prefix = f"blk.{layer}.", f"model.layers.{layer}."
        for name, (hf_name, shape) in LAYER_TENSORS.items():
            tensors[f"{hf_prefix}{hf_name}.weight"] = _make(f"{prefix}{name}.weight", shape, qtype, rng)
        for name, hf_name in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            tensors[f"{hf_prefix}{hf_name}.weight"] = _make(f"{prefix}{name}.weight", (HIDDEN,), Q.F32, rng)
    to_write = {t.gguf_name: _as_written(t) for t in tensors.values()}
    to_write.update(replace or {})
    write_gguf(path, _metadata(arch, len(layer_types), metadata or {}), to_write, arch)
    return tensors


def llama_cpp_permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf's Q/K permutation: each head's two rotary halves interleaved pairwise."""
    halves = rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:])
    return halves.swapaxes(1, 2).reshape(rows.shape)


def _make(gguf_name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType, rng) -> TinyTensor:
    if qtype in K_QUANT_SCALE_OFFSETS:
        return TinyTensor(gguf_name, qtype, shape, _random_k_blocks(shape, qtype, rng), None)
    values = rng.standard_normal(shape).astype(np.float32)
    if gguf_name.endswith("norm.weight"):
        values = 1.0 + 0.1 * values
    return TinyTensor(gguf_name, qtype, shape, quantize(values, qtype), values)


def _random_k_blocks(shape: tuple[int, int], qtype: GGMLQuantizationType, rng) -> np.ndarray:
    blocks_per_row = shape[1] // 256
    blocks = rng.integers(0, 256, (shape[0] * blocks_per_row, K_QUANT_BLOCK_BYTES[qtype]), dtype=np.uint8)
    for offset in K_QUANT_SCALE_OFFSETS[qtype]:
        scales = rng.uniform(0.001, 0.01, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(shape[0], -1)


def _as_written(tensor: TinyTensor) -> np.ndarray | tuple[np.ndarray, GGMLQuantizationType]:
    """Floats as they are (the writer infers their type), blocks with their type."""
    data = tensor.stored
    if ".attn_q." in tensor.gguf_name:
        data = llama_cpp_permute(data, HEADS)
    elif ".attn_k." in tensor.gguf_name:
        data = llama_cpp_permute(data, KV_HEADS)
    return data if data.dtype != np.uint8 else (data, tensor.qtype)


def _metadata(arch: str, num_layers: int, overrides: dict[str, object]) -> dict[str, object]:
    values: dict[str, object] = {
        f"{arch}.block_count": num_layers, f"{arch}.context_length": 512, f"{arch}.embedding_length": HIDDEN,
        f"{arch}.feed_forward_length": FFN, f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS, f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 10000.0, f"{arch}.vocab_size": VOCAB,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "general.name": "tiny",
    }
    values.update({key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}": value
                   for key, value in overrides.items()})
    return {key: value for key, value in values.items() if value is not None}


def write_gguf(path: Path, metadata: dict[str, object], tensors: dict[str, object] | None = None,
               arch: str = "llama") -> Path:
    """A GGUF file holding `metadata` and `tensors` (float arrays, or (blocks, type) pairs); None values are
    left out."""
    writer = GGUFWriter(path, arch)
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, data in (tensors or {}).items():
        if data is None:
            continue
        if isinstance(data, tuple):
            writer.add_tensor(name, data[0], raw_dtype=data[1])
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
