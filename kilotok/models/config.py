"""Typed model configuration: what the model code needs to know of a checkpoint, translated from its
config.json by the model's family (models/registry.py) and validated once when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field

from kilotok.errors import ModelFormatError
from kilotok.layers.rotary import RopeScaling

QK_NORM_KINDS = ("rms", "l2")
ROUTER_SCORINGS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class MoeConfig:
    """Routed experts of a mixture-of-experts model.

    softmax scoring (Mixtral, Qwen3-MoE): weights are the softmax over all experts, kept for the top k and
    optionally renormalised to sum to one. sigmoid scoring (Llama 4): each chosen expert's weight is the
    sigmoid of its own logit, and `gate_on_input` scales the expert's input rather than its output.
    """

    num_experts: int
    num_experts_per_tok: int
    expert_intermediate_size: int
    layers: tuple[int, ...]
    scoring: str = "softmax"
    renormalize: bool = True
    gate_on_input: bool = False
    shared_expert_intermediate_size: int = 0

    def __post_init__(self) -> None:
        for name in ("num_experts", "num_experts_per_tok", "expert_intermediate_size"):
            if getattr(self, name) <= 0:
                raise ModelFormatError(f"MoE config field {name} must be positive, got {getattr(self, name)}")
        if self.num_experts_per_tok > self.num_experts:
            raise ModelFormatError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds the number of experts ({self.num_experts})"
            )
        if self.scoring not in ROUTER_SCORINGS:
            raise ModelFormatError(f"router scoring {self.scoring!r} is not one of {', '.join(ROUTER_SCORINGS)}")
        if self.shared_expert_intermediate_size < 0:
            raise ModelFormatError("shared_expert_intermediate_size must not be negative")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    """The model family (models/registry.py): llama, llama4, mixtral or qwen3_moe."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # Attention variants of the MoE families; the defaults are plain Llama attention.
    qk_norm: str | None = None
    """"rms": a learned per-head RMSNorm on q and k before RoPE (Qwen3); "l2": a weightless one after RoPE,
    on RoPE layers only (Llama 4)."""
    rope_interleaved: bool = False
    """RoPE rotates adjacent pairs (2i, 2i+1) as Llama 4 does, not the halves (i, i + D/2)."""
    nope_layers: tuple[int, ...] = ()
    """Layers that apply no RoPE."""
    attention_chunk_size: int | None = None
    chunked_layers: tuple[int, ...] = ()
    """Layers whose tokens attend only within their own chunk of `attention_chunk_size` positions."""
    attn_temperature_tuning: bool = False
    """On NoPE layers, scale q by 1 + attn_scale * log1p(floor((position + 1) / floor_scale))."""
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    moe: MoeConfig | None = None

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_kv_heads", "head_dim", "max_position_embeddings")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ModelFormatError(f"model config field {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ModelFormatError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        self._validate_variants()

    def _validate_variants(self) -> None:
        if self.qk_norm is not None and self.qk_norm not in QK_NORM_KINDS:
            raise ModelFormatError(f"qk_norm {self.qk_norm!r} is not one of {', '.join(QK_NORM_KINDS)}")
        if self.rope_interleaved and self.head_dim % 2:
            raise ModelFormatError(f"interleaved RoPE needs an even head_dim, got {self.head_dim}")
        if self.attention_chunk_size is not None and self.attention_chunk_size <= 0:
            raise ModelFormatError(f"attention_chunk_size must be positive, got {self.attention_chunk_size}")
        if self.chunked_layers and self.attention_chunk_size is None:
            raise ModelFormatError("chunked attention layers are given but attention_chunk_size is not")
        if self.floor_scale <= 0:
            raise ModelFormatError(f"floor_scale must be positive, got {self.floor_scale}")
        layer_lists = {"nope_layers": self.nope_layers, "chunked_layers": self.chunked_layers}
        if self.moe is not None:
            layer_lists["moe layers"] = self.moe.layers
        for name, layers in layer_lists.items():
            outside = [i for i in layers if not 0 <= i < self.num_layers]
            if outside:
                raise ModelFormatError(f"{name} {outside} are outside the model's {self.num_layers} layers")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim
