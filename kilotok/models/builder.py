"""Turns a loaded `Checkpoint` into kilotok's model modules in the requested number format."""

from __future__ import annotations

import torch
from tqdm import tqdm

from kilotok.config import ModelConfig
from kilotok.errors import InvalidRequestError, ModelFormatError
from kilotok.layers.linear import make_linear
from kilotok.layers.rotary import RotaryEmbedding
from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.tensor import QuantizedTensor, Weight, as_float
from kilotok.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP
from kilotok.models.moe_builder import build_variant_layer
from kilotok.quant.fp8_modes import FP8_MODES, STORED_FP8_MODE
from kilotok.quant.fp8_weight import Fp8Weight

WEIGHT_MODES = ("fp32", "bf16", "fp16", "int8", "int4", *FP8_MODES)
# int4 keeps activations (and the KV cache) in fp32: measured faster than bf16 on these CPUs (87 against 76
# tok/s), and with no bf16 intermediates a compiled graph's rounding no longer depends on its batch size or
# on what else it outputs, so speculative and batched greedy output equal plain greedy output bit for bit.
ACTIVATION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int4": torch.float32}


def resolve_weight_mode(mode: str, checkpoint: Checkpoint) -> str:
    """`auto` runs a GGUF's 4-bit weights and FP8 checkpoints as they are stored, other checkpoints in bf16."""
    if mode == "auto":
        if any(isinstance(w, Fp8Weight) for w in checkpoint.weights.values()):
            return STORED_FP8_MODE
        stored = {w.qtype.name for w in checkpoint.weights.values() if isinstance(w, QuantizedTensor)}
        return "int4" if stored & {"Q4_0", "Q4_1"} else "bf16"
    if mode not in WEIGHT_MODES:
        raise InvalidRequestError(f"unknown dtype {mode!r}; choose one of auto, {', '.join(WEIGHT_MODES)}")
    return mode


def build_model(checkpoint: Checkpoint, mode: str, progress: bool = True) -> LlamaForCausalLM:
    config = checkpoint.config
    weights = checkpoint.weights
    activation_dtype = ACTIVATION_DTYPES.get(mode, torch.bfloat16)
    rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                             config.rope_scaling)
    layers = [
        _build_layer(config, weights, f"model.layers.{i}.", mode, rotary) if config.architecture == "llama"
        else build_variant_layer(config, weights, i, mode, rotary)
        for i in tqdm(range(config.num_layers), desc="building layers", disable=not progress, leave=False)
    ]
    embed = as_float(_require(weights, "model.embed_tokens.weight"))
    head_weight = weights.get("lm_head.weight")
    if head_weight is None:
        if not config.tie_word_embeddings:
            raise ModelFormatError("checkpoint has no lm_head.weight and does not tie word embeddings")
        head_weight = weights["model.embed_tokens.weight"]
    # The head is the largest single matrix read per token; int4 would re-quantize it lossily, so
    # quantized modes keep it at int8. FP8 modes keep it as stored (bf16 unless the checkpoint quantized it).
    head_mode = "int8" if mode == "int4" else STORED_FP8_MODE if mode in FP8_MODES else mode
    model = LlamaForCausalLM(config, embed, layers, make_linear(head_weight, None, head_mode), activation_dtype)
    model.norm.weight.copy_(as_float(_require(weights, "model.norm.weight")))
    return model.eval()


def _build_layer(config: ModelConfig, weights: dict[str, Weight], prefix: str, mode: str,
                 rotary: RotaryEmbedding) -> LlamaDecoderLayer:
    def get(name: str) -> Weight:
        return _require(weights, prefix + name)

    def optional_bias(*names: str) -> torch.Tensor | None:
        found = [weights.get(prefix + n) for n in names]
        return torch.cat([as_float(b) for b in found]) if all(b is not None for b in found) else None

    attn = "self_attn."
    qkv = _concat([get(attn + "q_proj.weight"), get(attn + "k_proj.weight"), get(attn + "v_proj.weight")])
    qkv_bias = optional_bias(attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias")
    attention = LlamaAttention(
        config,
        make_linear(qkv, qkv_bias, mode),
        make_linear(get(attn + "o_proj.weight"), optional_bias(attn + "o_proj.bias"), mode),
        rotary,
    )
    gate_up = _concat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")])
    mlp = LlamaMLP(
        make_linear(gate_up, optional_bias("mlp.gate_proj.bias", "mlp.up_proj.bias"), mode),
        make_linear(get("mlp.down_proj.weight"), optional_bias("mlp.down_proj.bias"), mode),
    )
    layer = LlamaDecoderLayer(config, attention, mlp)
    layer.input_layernorm.weight.copy_(as_float(get("input_layernorm.weight")))
    layer.post_attention_layernorm.weight.copy_(as_float(get("post_attention_layernorm.weight")))
    return layer


def _require(weights: dict[str, Weight], name: str) -> Weight:
    if name not in weights:
        raise ModelFormatError(f"checkpoint is missing tensor {name}")
    return weights[name]



def _concat(parts: list[Weight]) -> Weight:
    if all(isinstance(p, Fp8Weight) for p in parts):
        return Fp8Weight.concat_rows(parts)
    if all(isinstance(p, QuantizedTensor) for p in parts) and len({p.qtype for p in parts}) == 1:
        return QuantizedTensor.concat_rows(parts)
    return torch.cat([as_float(p) for p in parts], dim=0)
