"""Llama, and the config.json fields every family shares (each family is Llama plus variations).

Only configs whose math is exactly Llama's are accepted. Mistral qualifies when its sliding window never
takes effect; Qwen2 does not (bias on q/k/v but not on o_proj, which Llama's `attention_bias` cannot say).
GGUF files reach this translation too: the GGUF loader writes their metadata as a Llama config.json.
"""

from __future__ import annotations

from typing import Any

from kilotok.errors import ModelFormatError
from kilotok.layers.rotary import RopeScaling
from kilotok.loader.hf_quant import check_quantization_config
from kilotok.models.family import ModelFamily

# transformers' own defaults for fields a config.json may leave out.
DEFAULT_ROPE_THETA = 10000.0
DEFAULT_RMS_NORM_EPS = 1e-6
LLAMA3_ROPE_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def llama_fields(config: dict[str, Any], default_context: int) -> dict[str, Any]:
    """The ModelConfig fields of a Llama config.json (every family's base)."""
    check_quantization_config(config.get("quantization_config"))
    activation = config.get("hidden_act", "silu")
    if activation != "silu":
        raise ModelFormatError(f"unsupported hidden_act {activation!r}; Llama models use 'silu'")
    hidden_size = _required_int(config, "hidden_size")
    num_heads = _required_int(config, "num_attention_heads")
    max_positions = int(config.get("max_position_embeddings") or default_context)
    _check_sliding_window(config, max_positions)
    rope_theta, rope_scaling = _rope_settings(config)
    return dict(
        vocab_size=_required_int(config, "vocab_size"),
        hidden_size=hidden_size,
        intermediate_size=_required_int(config, "intermediate_size"),
        num_layers=_required_int(config, "num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
        head_dim=_head_dim(config, hidden_size, num_heads),
        rms_norm_eps=float(config.get("rms_norm_eps", DEFAULT_RMS_NORM_EPS)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=max_positions,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=_token_ids(config.get("eos_token_id")),
    )


LLAMA = ModelFamily(
    name="llama",
    hf_architectures={"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"},
    default_context={"llama": 2048, "mistral": 4096 * 32},
)


def _check_sliding_window(config: dict[str, Any], max_positions: int) -> None:
    """A window at least as long as the context never masks anything, so such models are plain Llama."""
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False:
        return
    if window is not None and window < max_positions:
        raise ModelFormatError(
            f"sliding window attention (sliding_window={window} < max_position_embeddings={max_positions}) "
            "is not supported"
        )


def _required_int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFormatError(f"config.json needs an integer {key!r}, got {value!r}")
    return value


def positive_int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelFormatError(f"config.json needs a positive integer {key!r}, got {value!r}")
    return value


def _head_dim(config: dict[str, Any], hidden_size: int, num_heads: int) -> int:
    head_dim = config.get("head_dim")
    if head_dim:
        return int(head_dim)
    if hidden_size % num_heads:
        raise ModelFormatError(
            f"config.json has no head_dim and hidden_size {hidden_size} is not divisible by "
            f"num_attention_heads {num_heads}"
        )
    return hidden_size // num_heads


def _rope_settings(config: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """Read RoPE in either layout: transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
    params = dict(config.get("rope_scaling") or {})
    params.update(config.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", DEFAULT_ROPE_THETA)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ModelFormatError(
            f"unsupported RoPE scaling type {rope_type!r}; kilotok supports plain RoPE and 'llama3' scaling"
        )
    missing = [name for name in LLAMA3_ROPE_FIELDS if name not in params]
    if missing:
        raise ModelFormatError(f"llama3 RoPE scaling in config.json lacks {', '.join(missing)}")
    return theta, RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )


def _token_ids(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(token) for token in value)
