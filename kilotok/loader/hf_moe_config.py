"""The config.json fields of the mixture-of-experts families (Llama 4, Mixtral, Qwen3-MoE), as ModelConfig
fields. `hf_config.config_from_hf` reads what every family shares and merges these in."""

from __future__ import annotations

from typing import Any

from kilotok.config import MoeConfig
from kilotok.errors import ModelFormatError

# transformers' defaults for fields a config.json may leave out.
LLAMA4_DEFAULTS = {"intermediate_size_mlp": 16384, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
                   "no_rope_layer_interval": 4, "attention_chunk_size": 8192, "floor_scale": 8192,
                   "attn_scale": 0.1, "num_local_experts": 16}
LAYER_TYPES = ("full_attention", "chunked_attention")


def llama4_text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text model's config of a `Llama4ForConditionalGeneration` folder (its `text_config`), with token
    ids taken from the outer config where the inner one lacks them."""
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise ModelFormatError("a Llama4ForConditionalGeneration config.json needs a 'text_config' object")
    merged = dict(text)
    for key in ("bos_token_id", "eos_token_id", "tie_word_embeddings"):
        if merged.get(key) is None and config.get(key) is not None:
            merged[key] = config[key]
    merged["architectures"] = ["Llama4ForCausalLM"]
    merged["model_type"] = "llama4_text"
    return merged


def llama4_fields(config: dict[str, Any]) -> dict[str, Any]:
    def get(key: str) -> Any:
        value = config.get(key)
        return LLAMA4_DEFAULTS[key] if value is None else value

    num_layers = int(config["num_hidden_layers"])
    # `no_rope_layers[i]` is 1 where layer i *uses* RoPE (transformers' naming).
    uses_rope = config.get("no_rope_layers") or [
        int((i + 1) % get("no_rope_layer_interval") != 0) for i in range(num_layers)
    ]
    _check_length("no_rope_layers", uses_rope, num_layers)
    chunk = config.get("attention_chunk_size", LLAMA4_DEFAULTS["attention_chunk_size"])
    layer_types = config.get("layer_types") or [
        "chunked_attention" if uses_rope[i] and chunk is not None else "full_attention" for i in range(num_layers)
    ]
    _check_length("layer_types", layer_types, num_layers)
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown:
        raise ModelFormatError(f"config.json layer_types has {unknown}; Llama 4 layers are {', '.join(LAYER_TYPES)}")
    step = int(get("interleave_moe_layer_step"))
    moe_layers = config.get("moe_layers")
    if moe_layers is None:
        moe_layers = range(step - 1, num_layers, step)
    expert_size = _required(config, "intermediate_size")
    return {
        "intermediate_size": int(get("intermediate_size_mlp")),
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-5)),
        "qk_norm": "l2" if config.get("use_qk_norm", True) else None,
        "rope_interleaved": True,
        "nope_layers": tuple(i for i in range(num_layers) if not uses_rope[i]),
        "attention_chunk_size": chunk,
        "chunked_layers": tuple(i for i, kind in enumerate(layer_types) if kind == "chunked_attention"),
        "attn_temperature_tuning": bool(config.get("attn_temperature_tuning", True)),
        "floor_scale": float(get("floor_scale")),
        "attn_scale": float(get("attn_scale")),
        "moe": MoeConfig(
            num_experts=int(get("num_local_experts")),
            num_experts_per_tok=int(get("num_experts_per_tok")),
            expert_intermediate_size=expert_size,
            layers=tuple(int(i) for i in moe_layers),
            scoring="sigmoid",
            renormalize=False,
            gate_on_input=True,
            shared_expert_intermediate_size=expert_size,
        ),
    }


def mixtral_fields(config: dict[str, Any]) -> dict[str, Any]:
    num_layers = int(config["num_hidden_layers"])
    return {
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-5)),
        "moe": MoeConfig(
            num_experts=int(config.get("num_local_experts") or 8),
            num_experts_per_tok=int(config.get("num_experts_per_tok") or 2),
            expert_intermediate_size=_required(config, "intermediate_size"),
            layers=tuple(range(num_layers)),
        ),
    }


def qwen3_moe_fields(config: dict[str, Any]) -> dict[str, Any]:
    num_layers = int(config["num_hidden_layers"])
    num_experts = int(config.get("num_experts") or config.get("num_local_experts") or 0)
    step = int(config.get("decoder_sparse_step") or 1)
    dense_only = set(config.get("mlp_only_layers") or ())
    layers = tuple(i for i in range(num_layers) if i not in dense_only and num_experts and (i + 1) % step == 0)
    moe = None
    if layers:
        moe = MoeConfig(
            num_experts=num_experts,
            num_experts_per_tok=int(config.get("num_experts_per_tok") or 8),
            expert_intermediate_size=_required(config, "moe_intermediate_size"),
            layers=layers,
            renormalize=bool(config.get("norm_topk_prob", False)),
        )
    return {"qk_norm": "rms", "moe": moe}


FAMILY_FIELDS = {"llama4_text": llama4_fields, "mixtral": mixtral_fields, "qwen3_moe": qwen3_moe_fields}


def _required(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelFormatError(f"config.json needs a positive integer {key!r}, got {value!r}")
    return value


def _check_length(name: str, values: list, num_layers: int) -> None:
    if len(values) < num_layers:
        raise ModelFormatError(
            f"config.json {name} has {len(values)} entries but the model has {num_layers} layers"
        )
