"""GGUF metadata written as the config.json of the Hugging Face model it was converted from, with
llama.cpp's defaults for the keys it treats as optional, so GGUF files go through the same model family
code as safetensors folders."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from kilotok.errors import ModelFormatError

SUPPORTED_ARCHITECTURES = ("llama",)
"""GGUF architectures whose tensors gguf_names.py knows (llama.cpp's names for a Llama)."""
ROPE_FREQS_TENSOR = "rope_freqs.weight"
# convert_hf_to_gguf writes Llama 3 scaling only as per-frequency factors; only the ratios of the low and
# high frequency factors to the original context enter them, so we pin the context to its usual value.
LLAMA3_DEFAULT_ORIGINAL_CONTEXT = 8192
RELATIVE_TOLERANCE = 1e-4


def metadata_value(reader: GGUFReader, key: str, default: Any = None, required: bool = False) -> Any:
    """A metadata value as a Python object; per-layer arrays must be uniform (all kilotok layers match)."""
    field = reader.get_field(key)
    if field is None:
        if required:
            raise ModelFormatError(f"GGUF metadata lacks the required key {key!r}; the file is incomplete, "
                                   "convert the model again with llama.cpp's convert_hf_to_gguf.py")
        return default
    value = field.contents()
    if isinstance(value, list) and value and not isinstance(value[0], str):
        if len(set(value)) != 1:
            raise ModelFormatError(f"GGUF key {key!r} varies per layer ({value[:4]}...); kilotok needs "
                                   "the same value for every layer")
        value = value[0]
    return value


def architecture_of(reader: GGUFReader) -> str:
    architecture = metadata_value(reader, "general.architecture", required=True)
    if architecture not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ModelFormatError(f"unsupported GGUF architecture {architecture!r}; kilotok runs {supported}")
    return architecture


def hf_config_from_gguf(reader: GGUFReader) -> dict[str, Any]:
    """The config.json of the Llama this GGUF file holds."""
    arch = architecture_of(reader)

    def key(suffix: str, default: Any = None, required: bool = False) -> Any:
        return metadata_value(reader, f"{arch}.{suffix}", default, required)

    if key("expert_count", 0):
        raise ModelFormatError("this GGUF is a mixture-of-experts model, which kilotok does not run")
    hidden = int(key("embedding_length", required=True))
    num_heads = int(key("attention.head_count", required=True))
    head_dim = int(key("attention.key_length", hidden // num_heads))
    rotary_dims = int(key("rope.dimension_count", head_dim))
    if rotary_dims != head_dim or int(key("attention.value_length", head_dim)) != head_dim:
        raise ModelFormatError(f"GGUF heads rotate {rotary_dims} of {head_dim} dims or have another value "
                               "width; kilotok supports full-width rotary llama heads only")
    rope_theta = float(key("rope.freq_base", 10000.0))
    tensor_names = {tensor.name for tensor in reader.tensors}
    bos = metadata_value(reader, "tokenizer.ggml.bos_token_id")
    eos = list(_end_of_generation_ids(reader))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": _vocab_size(reader, arch),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length", required=True)),
        "num_hidden_layers": int(key("block_count", required=True)),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(key("attention.head_count_kv", num_heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", required=True)),
        "rope_theta": rope_theta,
        "max_position_embeddings": int(key("context_length", required=True)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": "blk.0.ffn_up.bias" in tensor_names,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": eos[0] if len(eos) == 1 else eos or None,
    }
    scaling = _rope_scaling(reader, arch, rope_theta, head_dim)
    if scaling is not None:
        config["rope_scaling"] = scaling
    return config


def _vocab_size(reader: GGUFReader, arch: str) -> int:
    size = metadata_value(reader, f"{arch}.vocab_size")
    if size is not None:
        return int(size)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelFormatError(f"GGUF has neither {arch}.vocab_size nor tokenizer.ggml.tokens; "
                               "it carries no vocabulary, convert the model again")
    return len(tokens.data)


def _end_of_generation_ids(reader: GGUFReader) -> tuple[int, ...]:
    """EOS plus end-of-turn and end-of-message, which llama.cpp also stops on (Llama 3 chat ends with EOT)."""
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    ids = (metadata_value(reader, key) for key in keys)
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def _rope_scaling(reader: GGUFReader, arch: str, theta: float, head_dim: int) -> dict[str, Any] | None:
    scaling_type = metadata_value(reader, f"{arch}.rope.scaling.type", "none")
    factor = float(metadata_value(reader, f"{arch}.rope.scaling.factor", 1.0))
    if scaling_type != "none" and factor != 1.0:
        raise ModelFormatError(f"GGUF uses {scaling_type!r} rope scaling (factor {factor}); kilotok supports "
                               "Llama 3 scaling only")
    freqs_tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS_TENSOR), None)
    if freqs_tensor is None:
        return None
    factors = dequantize(freqs_tensor.data, freqs_tensor.tensor_type).astype(np.float64).reshape(-1)
    if factors.shape != (head_dim // 2,):
        raise ModelFormatError(f"{ROPE_FREQS_TENSOR} has {factors.size} values, expected one per rotary pair "
                               f"({head_dim // 2}); the file is corrupt")
    original = int(metadata_value(reader, f"{arch}.rope.scaling.original_context_length",
                                  LLAMA3_DEFAULT_ORIGINAL_CONTEXT))
    scaling = fit_llama3_scaling(factors, theta, head_dim, original)
    return None if scaling is None else {"rope_type": "llama3", **scaling}


def llama3_frequency_factors(scaling: dict[str, float], theta: float, head_dim: int) -> np.ndarray:
    """How much Llama 3 scaling (config.json's `rope_scaling` fields) divides each rotary frequency by, as
    convert_hf_to_gguf writes rope_freqs."""
    wavelengths = _wavelengths(theta, head_dim)
    context = scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    smooth = np.clip((context / wavelengths - low) / (high - low), 0.0, 1.0)
    return 1.0 / ((1.0 - smooth) / scaling["factor"] + smooth)


def fit_llama3_scaling(
    factors: np.ndarray, theta: float, head_dim: int, original_context: int
) -> dict[str, float] | None:
    """Recover Llama 3 scaling parameters from the per-frequency factors in `rope_freqs.weight`.

    Between the two cut-offs the factors follow 1/f = (1 - s)/F + s with s linear in context/wavelength,
    so the scaling factor F is the largest factor and a line through the smoothed ones gives the rest.
    """
    factor = float(factors.max())
    if math.isclose(factor, 1.0, rel_tol=RELATIVE_TOLERANCE) and math.isclose(float(factors.min()), 1.0):
        return None
    smoothed = (factors > 1.0 + RELATIVE_TOLERANCE) & (factors < factor * (1.0 - RELATIVE_TOLERANCE))
    if smoothed.sum() < 2:
        raise ModelFormatError(f"{ROPE_FREQS_TENSOR} does not determine Llama 3 rope scaling (fewer than two "
                               "smoothed frequencies); kilotok cannot run this rope variant")
    smooth = (1.0 / factors[smoothed] - 1.0 / factor) / (1.0 - 1.0 / factor)
    position = original_context / _wavelengths(theta, head_dim)[smoothed]
    width, low = np.polyfit(smooth, position, 1)
    scaling = {"factor": factor, "low_freq_factor": float(low), "high_freq_factor": float(low + width),
               "original_max_position_embeddings": original_context}
    if not np.allclose(llama3_frequency_factors(scaling, theta, head_dim), factors, rtol=1e-3):
        raise ModelFormatError(f"{ROPE_FREQS_TENSOR} does not follow Llama 3 rope scaling; kilotok "
                               "cannot run this rope variant")
    return scaling


def _wavelengths(theta: float, head_dim: int) -> np.ndarray:
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    return 2.0 * math.pi * theta**exponents
