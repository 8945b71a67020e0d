"""Tensor names and shapes of the mixture-of-experts families in Hugging Face folders.

A multimodal Llama 4 folder keeps its text model under `language_model.` (beside `vision_model.` and
`multi_modal_projector.`, which kilotok does not read). Llama 4 stores its experts fused, as 3-D tensors
for x @ W (`gate_up_proj` [E, d, 2f], `down_proj` [E, f, d]); Mixtral and Qwen3-MoE store one
nn.Linear per expert.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from kilotok.config import ModelConfig
from kilotok.errors import ModelFormatError

TEXT_MODEL_PREFIX = "language_model."
FFN_PREFIX = {"llama": "mlp.", "llama4": "feed_forward.", "mixtral": "block_sparse_moe.", "qwen3_moe": "mlp."}
PER_EXPERT_LINEARS = {
    "mixtral": {"w1": "gate", "w3": "up", "w2": "down"},
    "qwen3_moe": {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"},
}


def text_model_names(stored: Iterable[str]) -> dict[str, str]:
    """Map each tensor kilotok reads to its stored name: the `language_model.` part of a multimodal
    checkpoint when there is one, else every tensor under its own name."""
    stored = list(stored)
    if not any(name.startswith(TEXT_MODEL_PREFIX) for name in stored):
        return {name: name for name in stored}
    return {name[len(TEXT_MODEL_PREFIX):]: name for name in stored if name.startswith(TEXT_MODEL_PREFIX)}


def variant_layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Feed-forward (dense or expert) and q/k norm tensors of every layer, by name, with their shapes."""
    shapes: dict[str, tuple[int, ...]] = {}
    ffn = FFN_PREFIX[config.architecture]
    moe_layers = set(config.moe.layers) if config.moe else set()
    for layer in range(config.num_layers):
        prefix = f"model.layers.{layer}."
        if config.qk_norm == "rms":
            shapes[prefix + "self_attn.q_norm.weight"] = (config.head_dim,)
            shapes[prefix + "self_attn.k_norm.weight"] = (config.head_dim,)
        if layer in moe_layers:
            shapes.update(_expert_shapes(config, prefix + ffn))
        else:
            shapes.update(_mlp_shapes(prefix + ffn, config.hidden_size, config.intermediate_size))
    return shapes


def last_dense_mlp(config: ModelConfig) -> str | None:
    """Name prefix of the last layer's dense MLP (`gate_proj`, `up_proj`, `down_proj` below it, of width
    `intermediate_size`) among the layers that have one; None when every layer is a MoE layer."""
    moe_layers = set(config.moe.layers) if config.moe else set()
    dense = [i for i in range(config.num_layers) if i not in moe_layers]
    return f"model.layers.{dense[-1]}.{FFN_PREFIX[config.architecture]}" if dense else None


def check_ffn_tensors(config: ModelConfig, names: Iterable[str], expected: dict[str, tuple[int, ...]]) -> None:
    """Fail on a feed-forward tensor the config does not account for: an expert beyond the configured
    count, or experts on a layer the config makes dense."""
    pattern = re.compile(rf"model\.layers\.(\d+)\.{re.escape(FFN_PREFIX[config.architecture])}")
    for name in names:
        match = pattern.match(name)
        if match and name not in expected:
            layer = int(match.group(1))
            kind = "MoE" if config.moe and layer in config.moe.layers else "dense"
            experts = config.moe.num_experts if config.moe else 0
            raise ModelFormatError(
                f"tensor {name!r} is not part of the model config.json describes (layer {layer} is a {kind} "
                f"layer; {experts} experts per MoE layer): the checkpoint and its config.json disagree"
            )


def _expert_shapes(config: ModelConfig, ffn: str) -> dict[str, tuple[int, ...]]:
    moe = config.moe
    hidden, size, experts = config.hidden_size, moe.expert_intermediate_size, moe.num_experts
    shapes: dict[str, tuple[int, ...]] = {}
    if config.architecture == "llama4":
        shapes[ffn + "router.weight"] = (experts, hidden)
        shapes[ffn + "experts.gate_up_proj"] = (experts, hidden, 2 * size)
        shapes[ffn + "experts.down_proj"] = (experts, size, hidden)
        if moe.shared_expert_intermediate_size:
            shapes.update(_mlp_shapes(ffn + "shared_expert.", hidden, moe.shared_expert_intermediate_size))
        return shapes
    shapes[ffn + "gate.weight"] = (experts, hidden)
    for expert in range(experts):
        for linear, role in PER_EXPERT_LINEARS[config.architecture].items():
            shape = (hidden, size) if role == "down" else (size, hidden)
            shapes[f"{ffn}experts.{expert}.{linear}.weight"] = shape
    return shapes


def _mlp_shapes(prefix: str, hidden: int, size: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "gate_proj.weight": (size, hidden), prefix + "up_proj.weight": (size, hidden),
            prefix + "down_proj.weight": (hidden, size)}
