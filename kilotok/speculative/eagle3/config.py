"""The draft head's shape and the fingerprint of the target it was trained for."""

from __future__ import annotations

from dataclasses import dataclass

from kilotok.errors import ModelFormatError
from kilotok.layers.rotary import RopeScaling
from kilotok.models.config import ModelConfig


def default_aux_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """Low, middle and high layers, as the EAGLE-3 reference and vLLM choose them by default."""
    return (2, num_layers // 2, num_layers - 3)


@dataclass(frozen=True)
class TargetFingerprint:
    """What must match between a head and the target that runs it; anything else gives acceptance ~1."""

    architecture: str
    hidden_size: int
    vocab_size: int
    num_layers: int

    @classmethod
    def of(cls, target: ModelConfig) -> TargetFingerprint:
        return cls(target.architecture, target.hidden_size, target.vocab_size, target.num_layers)


@dataclass(frozen=True)
class Eagle3Config:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    draft_vocab_size: int
    target_vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    aux_layer_ids: tuple[int, int, int]
    target: TargetFingerprint

    def __post_init__(self) -> None:
        if len(self.aux_layer_ids) != 3:
            raise ModelFormatError(f"an EAGLE-3 head fuses exactly 3 target layers, got {self.aux_layer_ids}")
        if not 0 < self.draft_vocab_size <= self.target_vocab_size:
            raise ModelFormatError(
                f"draft_vocab_size {self.draft_vocab_size} must be in 1..{self.target_vocab_size} (target vocab)"
            )
        if self.num_heads % self.num_kv_heads:
            raise ModelFormatError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @classmethod
    def for_target(cls, target: ModelConfig, draft_vocab_size: int,
                   aux_layer_ids: tuple[int, int, int] | None = None) -> Eagle3Config:
        """A head shaped like one decoder layer of `target`, so the layer can start from the target's own."""
        return cls(
            hidden_size=target.hidden_size,
            num_heads=target.num_heads,
            num_kv_heads=target.num_kv_heads,
            head_dim=target.head_dim,
            intermediate_size=target.intermediate_size,
            draft_vocab_size=min(draft_vocab_size, target.vocab_size),
            target_vocab_size=target.vocab_size,
            rms_norm_eps=target.rms_norm_eps,
            rope_theta=target.rope_theta,
            rope_scaling=target.rope_scaling,
            max_position_embeddings=target.max_position_embeddings,
            aux_layer_ids=tuple(aux_layer_ids or default_aux_layer_ids(target.num_layers)),
            target=TargetFingerprint.of(target),
        )

    def mismatches(self, target: ModelConfig) -> list[str]:
        """Every way `target` differs from what this head was trained for (empty when it fits)."""
        problems = []
        expected = self.target
        for field_name, theirs in (("architecture", target.architecture), ("hidden_size", target.hidden_size),
                                   ("vocab_size", target.vocab_size), ("num_layers", target.num_layers)):
            ours = getattr(expected, field_name)
            if ours != theirs:
                problems.append(f"{field_name}: head trained for {ours!r}, target has {theirs!r}")
        out_of_range = [i for i in self.aux_layer_ids if not 0 <= i < target.num_layers]
        if out_of_range:
            problems.append(f"aux layer ids {out_of_range} are outside the target's {target.num_layers} layers")
        return problems
