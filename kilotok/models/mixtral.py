"""Mixtral: every layer a mixture of experts, softmax-routed to the top 2 of 8 with the weights
renormalised, one nn.Linear per expert (w1 gate, w3 up, w2 down)."""

from __future__ import annotations

from typing import Any

from kilotok.models.config import MoeConfig
from kilotok.models.family import Experts, ModelFamily
from kilotok.models.llama import positive_int


def mixtral_fields(config: dict[str, Any]) -> dict[str, Any]:
    num_layers = int(config["num_hidden_layers"])
    return {
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-5)),
        "moe": MoeConfig(
            num_experts=int(config.get("num_local_experts") or 8),
            num_experts_per_tok=int(config.get("num_experts_per_tok") or 2),
            expert_intermediate_size=positive_int(config, "intermediate_size"),
            layers=tuple(range(num_layers)),
        ),
    }


MIXTRAL = ModelFamily(
    name="mixtral",
    hf_architectures={"MixtralForCausalLM": "mixtral"},
    default_context={"mixtral": 4096 * 32},
    config_fields=mixtral_fields,
    ffn_prefix="block_sparse_moe.",
    experts=Experts(router="gate.weight", linears={"w1": "gate", "w3": "up", "w2": "down"}),
)
