"""llama.cpp tensor names -> Hugging Face Llama names and shapes; undoing llama.cpp's Q/K row order."""

from __future__ import annotations

import re

import numpy as np

from kilotok.config import ModelConfig
from kilotok.errors import ModelFormatError

GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
GLOBAL_PATTERN = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a llama.cpp tensor; unknown tensors are refused, not silently dropped."""
    if match := LAYER_PATTERN.fullmatch(gguf_name):
        layer, part, kind = match.groups()
        if part in LAYER_NAMES:
            return f"model.layers.{layer}.{LAYER_NAMES[part]}.{kind}"
    elif (match := GLOBAL_PATTERN.fullmatch(gguf_name)) and match.group(1) in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[match.group(1)]}.{match.group(2)}"
    raise ModelFormatError(
        f"GGUF tensor {gguf_name!r} is not part of a llama model kilotok can run (mixture-of-experts or a "
        "different architecture labelled llama?)"
    )


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model with this config needs, in torch order (out_features, in_features)."""
    hidden, ffn = config.hidden_size, config.intermediate_size
    layer_shapes: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj.weight": (config.q_size, hidden),
        "self_attn.k_proj.weight": (config.kv_size, hidden),
        "self_attn.v_proj.weight": (config.kv_size, hidden),
        "self_attn.o_proj.weight": (hidden, config.q_size),
        "mlp.gate_proj.weight": (ffn, hidden),
        "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }
    if config.attention_bias:
        for proj, size in (("q", config.q_size), ("k", config.kv_size), ("v", config.kv_size), ("o", hidden)):
            layer_shapes[f"self_attn.{proj}_proj.bias"] = (size,)
    if config.mlp_bias:
        for proj, size in (("gate", ffn), ("up", ffn), ("down", hidden)):
            layer_shapes[f"mlp.{proj}_proj.bias"] = (size,)
    shapes = {"model.embed_tokens.weight": (config.vocab_size, hidden), "model.norm.weight": (hidden,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, hidden)
    for layer in range(config.num_layers):
        shapes.update({f"model.layers.{layer}.{name}": shape for name, shape in layer_shapes.items()})
    return shapes


def rope_heads(name: str, config: ModelConfig) -> int | None:
    """How many heads llama.cpp interleaved this tensor's rows for, or None when it left them alone."""
    if ".self_attn.q_proj." in name:
        return config.num_heads
    if ".self_attn.k_proj." in name:
        return config.num_kv_heads
    return None


def unpermute_rows(num_rows: int, num_heads: int) -> np.ndarray:
    """Row order that undoes convert_hf_to_gguf's Q/K permutation.

    Hugging Face keeps each head's rotary pairs in two halves (rotate_half); llama.cpp's rope wants them
    adjacent, so the converter stores row (head, half, i) at (head, i, half). Row r of the result is the
    GGUF row that holds Hugging Face row r.
    """
    head_dim = num_rows // num_heads
    gguf_rows = np.arange(num_rows).reshape(num_heads, head_dim // 2, 2)
    return gguf_rows.transpose(0, 2, 1).reshape(-1)
