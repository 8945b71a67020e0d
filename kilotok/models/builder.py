"""Places a loaded `Checkpoint` into kilotok's modules, in one weight format, for every family: the
family (models/registry.py) says where each layer's feed-forward weights are, the config says which
attention variant each layer runs. `load_model` reads and builds a model by name."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from kilotok.errors import ModelFormatError
from kilotok.kernels.backend import KernelBackend, resolve_backend
from kilotok.kernels.cpu_attention import cpu_attention_available
from kilotok.kernels.device import resolve_device
from kilotok.layers.attention import Attention
from kilotok.layers.linear import make_linear
from kilotok.layers.moe import SparseMoe
from kilotok.layers.norm import RMSNorm
from kilotok.layers.rotary import RotaryEmbedding
from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.tensor import QuantizedTensor, Weight, as_float
from kilotok.loader.tensor_check import check_tensors as find_damaged_tensors
from kilotok.models.causal_lm import MLP, CausalLM, DecoderLayer
from kilotok.models.config import ModelConfig
from kilotok.models.family import ModelFamily
from kilotok.models.registry import FAMILIES, load_checkpoint, model_config
from kilotok.quant.formats import WeightFormat, check_dtype_device, resolve_weight_format, weight_format
from kilotok.quant.fp8 import quantize_fp8
from kilotok.tokenizer.tokenizer import Tokenizer


def build_model(checkpoint: Checkpoint, fmt: WeightFormat | str, progress: bool = True,
                backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False,
                config: ModelConfig | None = None, device: torch.device | str = "cpu") -> CausalLM:
    """`backend` (already resolved) is handed to every layer; `pdl` lets its Triton kernels overlap their
    launches (kernels/triton/pdl.py). `config` overrides the checkpoint's own (a tensor-parallel rank
    builds its slice's sizes). Each layer is built on the host from the checkpoint's tensors and moved to
    `device` at once, so the host never holds more than one built layer beside the checkpoint."""
    fmt = weight_format(fmt)
    config = config or model_config(checkpoint.config)
    weights = checkpoint.weights
    family = FAMILIES[config.architecture]
    rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                             config.rope_scaling, backend, pdl)
    on_cpu = torch.device(device).type == "cpu"
    kernels = KernelChoice(backend, pdl, backend is KernelBackend.TORCH and on_cpu and cpu_attention_available())
    layers = [_layer(config, family, LayerWeights(weights, i), i, fmt, rotary, kernels).to(device)
              for i in tqdm(range(config.num_layers), desc="building layers", disable=not progress, leave=False)]
    embed = as_float(_require(weights, "model.embed_tokens.weight"))
    head_weight = weights.get("lm_head.weight")
    if head_weight is None:
        if not config.tie_word_embeddings:
            raise ModelFormatError("checkpoint has no lm_head.weight and does not tie word embeddings")
        head_weight = weights["model.embed_tokens.weight"]
    model = CausalLM(config, embed, layers, make_linear(head_weight, None, fmt.head), fmt.activation_dtype, backend,
                     pdl, fmt.kv_cache_dtype)
    model.norm.weight.copy_(as_float(_require(weights, "model.norm.weight")))
    return model.to(device).eval()


@dataclass(frozen=True)
class KernelChoice:
    backend: KernelBackend
    pdl: bool
    cpu_attention: bool
    """Decode attention through the C++ op (kernels/cpu_attention.py): built only for a model on the CPU."""


class LayerWeights:
    """One decoder layer's weights by name relative to `model.layers.{i}.` (a family `Getter`)."""

    def __init__(self, weights: dict[str, Weight], index: int) -> None:
        self.weights = weights
        self.prefix = f"model.layers.{index}."

    def __call__(self, name: str) -> Weight:
        return _require(self.weights, self.prefix + name)

    def bias(self, *names: str) -> torch.Tensor | None:
        """The named biases concatenated, or None when the checkpoint has none of them."""
        found = [self.weights.get(self.prefix + name) for name in names]
        return torch.cat([as_float(b) for b in found]) if all(b is not None for b in found) else None


def _layer(config: ModelConfig, family: ModelFamily, get: LayerWeights, index: int, fmt: WeightFormat,
           rotary: RotaryEmbedding, kernels: KernelChoice) -> DecoderLayer:
    ffn = family.ffn_prefix
    if config.moe is not None and index in config.moe.layers:
        feed_forward = _sparse_moe(config, family, get, fmt, kernels)
    else:
        feed_forward = _mlp(get, ffn, fmt, kernels)
    layer = DecoderLayer(config, _attention(config, get, index, fmt, rotary, kernels), feed_forward, kernels.backend,
                         kernels.pdl)
    layer.input_layernorm.weight.copy_(as_float(get("input_layernorm.weight")))
    layer.post_attention_layernorm.weight.copy_(as_float(get("post_attention_layernorm.weight")))
    return layer


def _attention(config: ModelConfig, get: LayerWeights, index: int, fmt: WeightFormat,
               rotary: RotaryEmbedding, kernels: KernelChoice) -> Attention:
    attn = "self_attn."
    qkv = _concat([get(f"{attn}{p}_proj.weight") for p in "qkv"])
    qkv_bias = get.bias(*(f"{attn}{p}_proj.bias" for p in "qkv"))
    o_bias = get.bias(attn + "o_proj.bias")
    q_norm = k_norm = None
    if config.qk_norm == "rms":
        q_norm, k_norm = (_rms_norm(config, get(f"{attn}{p}_norm.weight"), kernels) for p in "qk")
    use_rope = index not in config.nope_layers
    return Attention(
        config.num_heads, config.num_kv_heads, config.head_dim,
        make_linear(qkv, qkv_bias, fmt, kernels.backend, kernels.pdl),
        make_linear(get(attn + "o_proj.weight"), o_bias, fmt, kernels.backend, kernels.pdl),
        rotary if use_rope else None,
        rope_interleaved=config.rope_interleaved,
        q_norm=q_norm,
        k_norm=k_norm,
        l2_norm_eps=config.rms_norm_eps if config.qk_norm == "l2" and use_rope else None,
        chunk_size=config.attention_chunk_size if index in config.chunked_layers else 0,
        temperature=(config.floor_scale, config.attn_scale) if config.attn_temperature_tuning and not use_rope
        else None,
        backend=kernels.backend,
        pdl=kernels.pdl,
        cpu_kernel=kernels.cpu_attention,
    )


def _mlp(get: LayerWeights, prefix: str, fmt: WeightFormat, kernels: KernelChoice) -> MLP:
    gate_up = _concat([get(prefix + "gate_proj.weight"), get(prefix + "up_proj.weight")])
    gate_up_bias = get.bias(prefix + "gate_proj.bias", prefix + "up_proj.bias")
    down_bias = get.bias(prefix + "down_proj.bias")
    return MLP(make_linear(gate_up, gate_up_bias, fmt, kernels.backend, kernels.pdl),
               make_linear(get(prefix + "down_proj.weight"), down_bias, fmt, kernels.backend, kernels.pdl),
               kernels.backend, kernels.pdl)


def _sparse_moe(config: ModelConfig, family: ModelFamily, get: LayerWeights, fmt: WeightFormat,
                kernels: KernelChoice) -> SparseMoe:
    moe, experts, ffn = config.moe, family.experts, family.ffn_prefix
    # Experts run in FP8 under FP8 formats (quantized in the format's scheme, 128x128 blocks where it keeps
    # stored weights) and in a float format otherwise (int8/int4 formats run them in bf16); the router is
    # never quantised: a rounded logit can change which expert a token goes to.
    float_format = fmt.float_format
    gate_up, down = (_expert_format(w, fmt) for w in experts.read(get, ffn, moe.num_experts))
    shared = _mlp(get, ffn + experts.shared_expert, fmt, kernels) if experts.shared_expert else None
    return SparseMoe(
        router=make_linear(as_float(get(ffn + experts.router)), None, float_format),
        gate_up=gate_up,
        down=down,
        top_k=moe.num_experts_per_tok,
        scoring=moe.scoring,
        renormalize=moe.renormalize,
        gate_on_input=moe.gate_on_input,
        shared_expert=shared,
        backend=kernels.backend,
        pdl=kernels.pdl,
    )


def _expert_format(weight: Weight, fmt: WeightFormat) -> torch.Tensor | Fp8Weight:
    # Stored FP8 experts stay as they are where the format keeps stored FP8 linear weights (layers/linear.py).
    if fmt.linear == "fp8" and isinstance(weight, Fp8Weight) and fmt.fp8_scheme in (None, weight.scheme):
        return weight
    scheme = fmt.fp8_scheme or fmt.fp8_unstored if fmt.linear == "fp8" else None
    weight = as_float(weight)
    return quantize_fp8(weight, scheme) if scheme else weight.to(fmt.float_format.float_dtype)


def _rms_norm(config: ModelConfig, weight: Weight, kernels: KernelChoice) -> RMSNorm:
    norm = RMSNorm(config.head_dim, config.rms_norm_eps, kernels.backend, kernels.pdl)
    norm.weight.copy_(as_float(weight))
    return norm


def _require(weights: dict[str, Weight], name: str) -> Weight:
    if name not in weights:
        raise ModelFormatError(f"checkpoint is missing tensor {name}")
    return weights[name]


def _concat(parts: list[Weight]) -> Weight:
    """Fused projections keep their stored format where every part shares it (GGUF blocks, FP8)."""
    if all(isinstance(p, Fp8Weight) for p in parts):
        return Fp8Weight.concat_rows(parts)
    if all(isinstance(p, QuantizedTensor) for p in parts) and len({p.qtype for p in parts}) == 1:
        return QuantizedTensor.concat_rows(parts)
    return torch.cat([as_float(p) for p in parts], dim=0)


@dataclass
class LoadedModel:
    name: str
    tokenizer: Tokenizer
    weight_format: WeightFormat
    model: CausalLM
    backend: KernelBackend


def load_model(name_or_path: str, dtype: str | WeightFormat = "auto", progress: bool = True,
               check_tensors: bool = False, backend: str | KernelBackend = "auto", pdl: bool = True,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load and build a model by alias, GGUF file or Hugging Face folder onto `device` (auto, cpu, cuda), in
    weight format `dtype` (auto picks one that runs there), with the kernel `backend` (auto, torch, triton)
    resolved for that device; `check_tensors` first looks through every weight for NaN and infinity."""
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    check_dtype_device(dtype, device)
    checkpoint = load_checkpoint(name_or_path, progress)
    if check_tensors:
        find_damaged_tensors(checkpoint)
    fmt = resolve_weight_format(dtype, checkpoint.weights, device)
    model = build_model(checkpoint, fmt, progress, backend, pdl, device=device)
    return LoadedModel(checkpoint.name, checkpoint.tokenizer, fmt, model, backend)
