"""Llama 4's text model: top-1 sigmoid-routed experts that scale their input, plus a shared expert;
chunked local attention on RoPE layers; NoPE layers with attention temperature tuning; an L2 QK norm;
RoPE on adjacent pairs. A multimodal `Llama4ForConditionalGeneration` folder runs its text model."""

from __future__ import annotations

from typing import Any

from kilotok.errors import ModelFormatError
from kilotok.models.config import MoeConfig
from kilotok.models.family import Experts, ModelFamily
from kilotok.models.llama import positive_int

# transformers' defaults for fields a config.json may leave out.
LLAMA4_DEFAULTS = {"intermediate_size_mlp": 16384, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
                   "no_rope_layer_interval": 4, "attention_chunk_size": 8192, "floor_scale": 8192,
                   "attn_scale": 0.1, "num_local_experts": 16}
LAYER_TYPES = ("full_attention", "chunked_attention")


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text model's config of a `Llama4ForConditionalGeneration` folder (its `text_config`), with token
    ids taken from the outer config where the inner one lacks them; a text model's config as it is."""
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llama4" and "Llama4ForConditionalGeneration" not in architectures:
        return config
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
    expert_size = positive_int(config, "intermediate_size")
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


LLAMA4 = ModelFamily(
    name="llama4",
    hf_architectures={"Llama4ForCausalLM": "llama4_text", "Llama4ForConditionalGeneration": "llama4"},
    default_context={"llama4_text": 4096 * 32},
    config_fields=llama4_fields,
    text_config=text_config,
    ffn_prefix="feed_forward.",
    experts=Experts(router="router.weight", shared_expert="shared_expert."),
)


def _check_length(name: str, values: list, num_layers: int) -> None:
    if len(values) < num_layers:
        raise ModelFormatError(
            f"config.json {name} has {len(values)} entries but the model has {num_layers} layers"
        )
