"""Qwen3-MoE: softmax-routed experts (top 8 of 128 in the released models, weights renormalised only
with `norm_topk_prob`) on every `decoder_sparse_step`-th layer except `mlp_only_layers`, and a learned
per-head RMSNorm on q and k before RoPE."""

from __future__ import annotations

from typing import Any

from kilotok.models.config import MoeConfig
from kilotok.models.family import Experts, ModelFamily
from kilotok.models.llama import positive_int


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
            expert_intermediate_size=positive_int(config, "moe_intermediate_size"),
            layers=layers,
            renormalize=bool(config.get("norm_topk_prob", False)),
        )
    return {"qk_norm": "rms", "moe": moe}


QWEN3_MOE = ModelFamily(
    name="qwen3_moe",
    hf_architectures={"Qwen3MoeForCausalLM": "qwen3_moe"},
    default_context={"qwen3_moe": 32768},
    config_fields=qwen3_moe_fields,
    experts=Experts(router="gate.weight", linears={"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}),
)
