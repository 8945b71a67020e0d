"""Builds the decoder layers of the mixture-of-experts families (Llama 4, Mixtral, Qwen3-MoE) from a
checkpoint's weights. The layers plug into models/llama.LlamaForCausalLM, so the engine, the KV cache and
EAGLE-3 see the same model interface whatever the family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kilotok.config import ModelConfig
from kilotok.errors import ModelFormatError
from kilotok.layers.linear import FLOAT_MODES, make_linear
from kilotok.layers.moe import SparseMoe
from kilotok.layers.norm import RMSNorm
from kilotok.layers.rotary import RotaryEmbedding
from kilotok.loader.tensor import Weight, as_float
from kilotok.models.llama import LlamaDecoderLayer, LlamaMLP
from kilotok.models.variant_attention import VariantAttention
from kilotok.quant.fp8_weight import Fp8Weight

Getter = Callable[[str], Weight]


@dataclass(frozen=True)
class ExpertNames:
    """Where a family keeps one layer's feed-forward weights, relative to `model.layers.{i}.`."""

    dense: str
    """Prefix of a dense layer's gate_proj / up_proj / down_proj."""
    router: str
    shared_expert: str | None
    read_experts: Callable[[Getter, int], tuple[torch.Tensor, torch.Tensor]]
    """(get, num_experts) -> gate_up [E, 2f, d], down [E, d, f] in nn.Linear layout."""


def _llama4_experts(get: Getter, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Stored for x @ W: gate_up [E, d, 2f] (gate columns first), down [E, f, d]; the FP8 (fbgemm_fp8)
    # checkpoints store them per output row instead, already in nn.Linear layout.
    def linear_layout(weight: Weight) -> torch.Tensor:
        return as_float(weight) if isinstance(weight, Fp8Weight) else as_float(weight).transpose(1, 2)

    return (linear_layout(get("feed_forward.experts.gate_up_proj")),
            linear_layout(get("feed_forward.experts.down_proj")))


def _per_expert(prefix: str, gate: str, up: str, down: str) -> Callable[[Getter, int], tuple[torch.Tensor, ...]]:
    def read(get: Getter, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
        names = [f"{prefix}{e}." for e in range(num_experts)]
        gate_up = torch.stack([torch.cat([as_float(get(n + gate)), as_float(get(n + up))]) for n in names])
        return gate_up, torch.stack([as_float(get(n + down)) for n in names])

    return read


FAMILY_NAMES = {
    "llama4": ExpertNames("feed_forward.", "feed_forward.router.weight", "feed_forward.shared_expert.",
                          _llama4_experts),
    "mixtral": ExpertNames("block_sparse_moe.", "block_sparse_moe.gate.weight", None,
                           _per_expert("block_sparse_moe.experts.", "w1.weight", "w3.weight", "w2.weight")),
    "qwen3_moe": ExpertNames("mlp.", "mlp.gate.weight", None,
                             _per_expert("mlp.experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight")),
}


def build_variant_layer(config: ModelConfig, weights: dict[str, Weight], index: int, mode: str,
                        rotary: RotaryEmbedding) -> LlamaDecoderLayer:
    prefix = f"model.layers.{index}."

    def get(name: str) -> Weight:
        if prefix + name not in weights:
            raise ModelFormatError(f"checkpoint is missing tensor {prefix + name}")
        return weights[prefix + name]

    names = FAMILY_NAMES[config.architecture]
    is_moe = config.moe is not None and index in config.moe.layers
    feed_forward = _sparse_moe(config, get, names, mode) if is_moe else _mlp(get, names.dense, mode)
    layer = LlamaDecoderLayer(config, _attention(config, get, index, mode, rotary), feed_forward)
    layer.input_layernorm.weight.copy_(as_float(get("input_layernorm.weight")))
    layer.post_attention_layernorm.weight.copy_(as_float(get("post_attention_layernorm.weight")))
    return layer


def _attention(config: ModelConfig, get: Getter, index: int, mode: str, rotary: RotaryEmbedding) -> VariantAttention:
    attn = "self_attn."
    qkv = torch.cat([as_float(get(f"{attn}{p}_proj.weight")) for p in "qkv"])
    qkv_bias = o_bias = None
    if config.attention_bias:
        qkv_bias = torch.cat([as_float(get(f"{attn}{p}_proj.bias")) for p in "qkv"])
        o_bias = as_float(get(attn + "o_proj.bias"))
    q_norm = k_norm = None
    if config.qk_norm == "rms":
        q_norm, k_norm = (_rms_norm(config, get(f"{attn}{p}_norm.weight")) for p in "qk")
    return VariantAttention(config, index, make_linear(qkv, qkv_bias, mode),
                            make_linear(as_float(get(attn + "o_proj.weight")), o_bias, mode), rotary, q_norm, k_norm)


def _mlp(get: Getter, prefix: str, mode: str) -> LlamaMLP:
    gate_up = torch.cat([as_float(get(prefix + "gate_proj.weight")), as_float(get(prefix + "up_proj.weight"))])
    down = as_float(get(prefix + "down_proj.weight"))
    return LlamaMLP(make_linear(gate_up, None, mode), make_linear(down, None, mode))


def _sparse_moe(config: ModelConfig, get: Getter, names: ExpertNames, mode: str) -> SparseMoe:
    moe = config.moe
    # Experts and router stay in a float format: int8/int4 modes run them in bf16 (the router is never
    # quantised: a rounded logit can change which expert a token goes to).
    float_mode = mode if mode in FLOAT_MODES else "bf16"
    gate_up, down = names.read_experts(get, moe.num_experts)
    shared = _mlp(get, names.shared_expert, mode) if names.shared_expert else None
    return SparseMoe(
        router=make_linear(as_float(get(names.router)), None, float_mode),
        gate_up=gate_up.to(FLOAT_MODES[float_mode]),
        down=down.to(FLOAT_MODES[float_mode]),
        top_k=moe.num_experts_per_tok,
        scoring=moe.scoring,
        renormalize=moe.renormalize,
        gate_on_input=moe.gate_on_input,
        shared_expert=shared,
    )


def _rms_norm(config: ModelConfig, weight: Weight) -> RMSNorm:
    norm = RMSNorm(config.head_dim, config.rms_norm_eps)
    norm.weight.copy_(as_float(weight))
    return norm



