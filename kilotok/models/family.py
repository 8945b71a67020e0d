"""What a model family declares (`ModelFamily`), and what follows from it for every family: the tensors a
checkpoint must hold and where one layer's feed-forward weights are.

Every family is Llama plus variations: the same embedding, attention projections, norms and head under
Hugging Face's Llama names, with its own config.json fields, its own feed-forward names and, on
mixture-of-experts layers, its own expert layout. Weights are read under Hugging Face names whatever
the file format (the GGUF loader renames llama.cpp's tensors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.tensor import Weight, as_float
from kilotok.models.config import ModelConfig

Getter = Callable[[str], Weight]
"""A layer's weight by its name relative to `model.layers.{i}.`."""


@dataclass(frozen=True)
class Experts:
    """Where a family keeps a mixture-of-experts layer's weights, relative to its feed-forward prefix:
    either one nn.Linear per expert (`linears` names gate, up and down), or Llama 4's fused 3-D tensors
    for x @ W (`experts.gate_up_proj` [E, d, 2f] with gate columns first, `experts.down_proj` [E, f, d])."""

    router: str
    shared_expert: str | None = None
    linears: dict[str, str] = field(default_factory=dict)
    """Per-expert linear name -> role ("gate", "up", "down"); empty for fused experts."""

    def shapes(self, config: ModelConfig, ffn: str) -> dict[str, tuple[int, ...]]:
        moe = config.moe
        hidden, size, count = config.hidden_size, moe.expert_intermediate_size, moe.num_experts
        shapes = {ffn + self.router: (count, hidden)}
        if not self.linears:
            shapes[ffn + "experts.gate_up_proj"] = (count, hidden, 2 * size)
            shapes[ffn + "experts.down_proj"] = (count, size, hidden)
        for expert in range(count if self.linears else 0):
            for linear, role in self.linears.items():
                shapes[f"{ffn}experts.{expert}.{linear}.weight"] = (hidden, size) if role == "down" else (size, hidden)
        if self.shared_expert and moe.shared_expert_intermediate_size:
            shapes.update(mlp_shapes(ffn + self.shared_expert, hidden, moe.shared_expert_intermediate_size))
        return shapes

    def read(self, get: Getter, ffn: str, num_experts: int) -> tuple[Weight, Weight]:
        """(gate_up [E, 2f, d], down [E, d, f]) in nn.Linear layout: floats, or fused FP8 experts as stored
        (dequantizing a Maverick-sized layer's experts would take tens of GB)."""
        if not self.linears:
            return _linear_layout(get(ffn + "experts.gate_up_proj")), _linear_layout(get(ffn + "experts.down_proj"))
        role_of = {role: linear for linear, role in self.linears.items()}
        names = [f"{ffn}experts.{e}." for e in range(num_experts)]
        gate_up = torch.stack([torch.cat([as_float(get(f"{n}{role_of['gate']}.weight")),
                                          as_float(get(f"{n}{role_of['up']}.weight"))]) for n in names])
        return gate_up, torch.stack([as_float(get(f"{n}{role_of['down']}.weight")) for n in names])


def _linear_layout(weight: Weight) -> Weight:
    # FP8 (fbgemm_fp8) checkpoints store fused experts per output row: already nn.Linear layout.
    return weight if isinstance(weight, Fp8Weight) else as_float(weight).transpose(1, 2)


def _no_fields(raw: dict[str, Any]) -> dict[str, Any]:
    return {}


def _same_config(raw: dict[str, Any]) -> dict[str, Any]:
    return raw


@dataclass(frozen=True)
class ModelFamily:
    name: str
    """kilotok's architecture name (ModelConfig.architecture), also recorded in draft heads."""
    hf_architectures: dict[str, str]
    """Hugging Face `architectures` entry -> the `model_type` that goes with it."""
    default_context: dict[str, int]
    """max_position_embeddings by model_type when config.json leaves it out (transformers' defaults)."""
    config_fields: Callable[[dict[str, Any]], dict[str, Any]] = _no_fields
    """The family's own ModelConfig fields, from its (text model's) config.json."""
    text_config: Callable[[dict[str, Any]], dict[str, Any]] = _same_config
    """The config.json of the text model a multimodal wrapper carries (itself for text models)."""
    ffn_prefix: str = "mlp."
    """Name prefix of a layer's feed-forward weights: a dense MLP's gate_proj/up_proj/down_proj, or experts."""
    experts: Experts | None = None


def mlp_shapes(prefix: str, hidden: int, size: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "gate_proj.weight": (size, hidden), prefix + "up_proj.weight": (size, hidden),
            prefix + "down_proj.weight": (hidden, size)}


def expected_shapes(config: ModelConfig, family: ModelFamily) -> dict[str, tuple[int, ...]]:
    """Every tensor a model of this config has, by Hugging Face name, with its shape. `lm_head.weight` is
    included even when tied: a tied checkpoint may omit it, but if present it must fit."""
    hidden, vocab = config.hidden_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
                                          "lm_head.weight": (vocab, hidden)}
    attention = (("q_proj", config.q_size, hidden), ("k_proj", config.kv_size, hidden),
                 ("v_proj", config.kv_size, hidden), ("o_proj", hidden, config.q_size))
    moe_layers = set(config.moe.layers) if config.moe else set()
    for layer in range(config.num_layers):
        prefix = f"model.layers.{layer}."
        for name, out_features, in_features in attention:
            shapes[f"{prefix}self_attn.{name}.weight"] = (out_features, in_features)
            if config.attention_bias:
                shapes[f"{prefix}self_attn.{name}.bias"] = (out_features,)
        if config.qk_norm == "rms":
            shapes[prefix + "self_attn.q_norm.weight"] = (config.head_dim,)
            shapes[prefix + "self_attn.k_norm.weight"] = (config.head_dim,)
        ffn = prefix + family.ffn_prefix
        if layer in moe_layers:
            shapes.update(family.experts.shapes(config, ffn))
        else:
            shapes.update(mlp_shapes(ffn, hidden, config.intermediate_size))
            if config.mlp_bias:
                for name, size in (("gate_proj", config.intermediate_size), ("up_proj", config.intermediate_size),
                                   ("down_proj", hidden)):
                    shapes[f"{ffn}{name}.bias"] = (size,)
        shapes[prefix + "input_layernorm.weight"] = (hidden,)
        shapes[prefix + "post_attention_layernorm.weight"] = (hidden,)
    return shapes


def check_feed_forward_names(config: ModelConfig, family: ModelFamily, names: Iterable[str],
                             expected: dict[str, tuple[int, ...]]) -> None:
    """Fail on a feed-forward tensor the config does not account for: an expert beyond the configured
    count, or experts on a layer the config makes dense. (Layers beyond the config's are the loader's to
    report: the GGUF loader refuses them, naming block_count.)"""
    pattern = re.compile(rf"model\.layers\.(\d+)\.{re.escape(family.ffn_prefix)}")
    for name in names:
        match = pattern.match(name)
        if match and name not in expected and int(match.group(1)) < config.num_layers:
            layer = int(match.group(1))
            kind = "MoE" if config.moe and layer in config.moe.layers else "dense"
            experts = config.moe.num_experts if config.moe else 0
            raise ModelFormatError(
                f"tensor {name!r} is not part of the model config.json describes (layer {layer} is a {kind} "
                f"layer; {experts} experts per MoE layer): the checkpoint and its config.json disagree"
            )


def last_dense_mlp(config: ModelConfig, family: ModelFamily) -> str | None:
    """Name prefix of the last layer's dense MLP (`gate_proj`, `up_proj`, `down_proj` below it, of width
    `intermediate_size`) among the layers that have one; None when every layer is a MoE layer."""
    moe_layers = set(config.moe.layers) if config.moe else set()
    dense = [i for i in range(config.num_layers) if i not in moe_layers]
    return f"model.layers.{dense[-1]}.{family.ffn_prefix}" if dense else None
