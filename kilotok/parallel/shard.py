"""One rank's part of a checkpoint, cut by weight name before the model is built, so that packing and
quantizing (layers/linear.py) see only the rank's slice: a GGUF int4 weight keeps its own codes and
scales, cut along the output dimension by rows and along the input dimension by whole blocks.

Column-parallel (output rows cut): q/k/v (by head), gate/up (by width), the embedding and LM head (by
vocabulary). Row-parallel (input columns cut): o_proj and down_proj, whose bias only the first rank keeps
(it is added once, before the sum over ranks). Experts: a rank keeps its expert group's experts, renumbered
from 0, each cut by width like an MLP. The router, norms and anything else are replicated.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.tensor import Weight
from kilotok.models.config import ModelConfig
from kilotok.models.family import ModelFamily
from kilotok.parallel.layout import RankLayout, Span
from kilotok.parallel.slicing import narrow

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"experts\.(\d+)\.(\w+)\.(weight|bias)")
COLUMN, ROW = 0, 1


def shard_weights(weights: dict[str, Weight], config: ModelConfig, family: ModelFamily,
                  layout: RankLayout) -> dict[str, Weight]:
    """The rank's weights, under the names the builder reads."""
    vocab = layout.vocab
    local: dict[str, Weight] = {}
    for name, weight in weights.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            local[name] = narrow(weight, 0, vocab, name)
            continue
        match = _LAYER.fullmatch(name)
        if match is None:
            local[name] = weight
            continue
        prefix = f"model.layers.{match.group(1)}."
        for local_name, part in _layer_weight(match.group(2), weight, config, family, layout):
            local[prefix + local_name] = part
    return local


def local_config(config: ModelConfig, layout: RankLayout) -> ModelConfig:
    """The config of the modules a rank builds. Routing keeps using the whole model's config (the router
    scores every expert); top-k is capped only so that the local expert count passes validation."""
    local = replace(config, num_heads=layout.heads.size, num_kv_heads=layout.kv_heads.size,
                    intermediate_size=max(layout.intermediate.size, 1))
    if config.moe is None:
        return local
    moe = replace(config.moe, num_experts=layout.experts.size,
                  num_experts_per_tok=min(config.moe.num_experts_per_tok, layout.experts.size),
                  expert_intermediate_size=layout.expert_intermediate.size,
                  shared_expert_intermediate_size=layout.shared_intermediate.size)
    return replace(local, moe=moe)


def _layer_weight(name: str, weight: Weight, config: ModelConfig, family: ModelFamily,
                  layout: RankLayout) -> list[tuple[str, Weight]]:
    """(local name, local weight) pairs for one weight of a decoder layer; none when the rank has no part."""
    head_dim = config.head_dim
    heads = Span(layout.heads.start * head_dim, layout.heads.size * head_dim)
    kv = Span(layout.kv_heads.start * head_dim, layout.kv_heads.size * head_dim)
    attention = {"self_attn.q_proj": (COLUMN, heads), "self_attn.k_proj": (COLUMN, kv),
                 "self_attn.v_proj": (COLUMN, kv), "self_attn.o_proj": (ROW, heads)}
    module, _, kind = name.rpartition(".")
    if module in attention:
        return _cut(name, weight, kind, *attention[module], layout)
    ffn = family.ffn_prefix
    if not name.startswith(ffn):
        return [(name, weight)]
    inner = name[len(ffn):]
    experts = family.experts
    if experts is not None and layout.experts is not None:
        if inner.startswith("experts."):
            return _expert_weight(ffn, inner, weight, experts.linears, layout)
        if experts.shared_expert and inner.startswith(experts.shared_expert):
            return _mlp_weight(name, inner[len(experts.shared_expert):], weight, layout.shared_intermediate,
                               layout)
        if inner.startswith(experts.router):
            return [(name, weight)]
    return _mlp_weight(name, inner, weight, layout.intermediate, layout)


def _mlp_weight(name: str, inner: str, weight: Weight, width: Span, layout: RankLayout) -> list[tuple[str, Weight]]:
    module, _, kind = inner.rpartition(".")
    if module in ("gate_proj", "up_proj"):
        return _cut(name, weight, kind, COLUMN, width, layout)
    if module == "down_proj":
        return _cut(name, weight, kind, ROW, width, layout)
    return [(name, weight)]


def _cut(name: str, weight: Weight, kind: str, axis: int, span: Span, layout: RankLayout) -> list[tuple[str, Weight]]:
    if kind == "bias":
        if axis == ROW:  # added after the sum over ranks would count it once per rank
            return [(name, weight)] if layout.is_first else []
        return [(name, narrow(weight, 0, span, name))]
    return [(name, narrow(weight, axis, span, name))]


def _expert_weight(ffn: str, inner: str, weight: Weight, linears: dict[str, str],
                   layout: RankLayout) -> list[tuple[str, Weight]]:
    experts, width = layout.experts, layout.expert_intermediate
    match = _EXPERT.fullmatch(inner)
    if match is not None:  # one linear per expert: keep the group's experts, numbered from 0
        expert, linear, kind = int(match.group(1)), match.group(2), match.group(3)
        if not experts.start <= expert < experts.stop:
            return []
        local_name = f"{ffn}experts.{expert - experts.start}.{linear}.{kind}"
        axis = ROW if linears.get(linear) == "down" else COLUMN
        return _cut(local_name, weight, kind, axis, width, layout)
    name = ffn + inner
    weight = narrow(weight, 0, experts, name)
    # Fused 3-D experts are stored for x @ W ([E, d, 2f] and [E, f, d]); FP8 ones in nn.Linear layout.
    linear_layout = isinstance(weight, Fp8Weight)
    if inner == "experts.gate_up_proj":
        size = weight.shape[1 if linear_layout else 2] // 2
        dim = 1 if linear_layout else 2
        gate = narrow(weight, dim, width, name)
        up = narrow(weight, dim, Span(size + width.start, width.size), name)
        return [(name, _concat(gate, up, dim))]
    if inner == "experts.down_proj":
        return [(name, narrow(weight, 2 if linear_layout else 1, width, name))]
    return [(name, weight)]


def _concat(first: Weight, second: Weight, dim: int) -> Weight:
    if isinstance(first, Fp8Weight):
        return Fp8Weight.concat_rows([first, second])
    return torch.cat([first, second], dim=dim)
