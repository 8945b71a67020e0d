"""Which part of the model a rank holds. Attention heads, MLP widths and the vocabulary are split over
all `tensor_parallel_size` ranks; experts are split into `expert_parallel_size` groups of ranks, each
group holding a contiguous range of experts, and within a group each expert's width is split again."""

from __future__ import annotations

from dataclasses import dataclass

from kilotok.errors import InvalidRequestError, ModelFormatError
from kilotok.models.config import ModelConfig


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    """Ranks the model is split over (the world size)."""
    expert_parallel_size: int = 1
    """Groups the experts of a mixture-of-experts layer are distributed over; divides the world size."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "expert_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}", param=name)
        if self.tensor_parallel_size % self.expert_parallel_size:
            raise InvalidRequestError(
                f"expert_parallel_size {self.expert_parallel_size} must divide tensor_parallel_size "
                f"{self.tensor_parallel_size}: expert groups are made of the tensor-parallel ranks",
                param="expert_parallel_size")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size


@dataclass(frozen=True)
class Span:
    """The slice [start, start + size) of a dimension."""

    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def __iter__(self):
        return iter((self.start, self.size))


@dataclass(frozen=True)
class RankLayout:
    """One rank's slices of every split dimension, for one model config."""

    rank: int
    world_size: int
    heads: Span
    kv_heads: Span
    intermediate: Span
    vocab: Span
    experts: Span | None = None
    expert_intermediate: Span | None = None
    shared_intermediate: Span | None = None

    @property
    def is_first(self) -> bool:
        """The rank that adds row-parallel biases (once, not once per rank)."""
        return self.rank == 0


def rank_layout(config: ModelConfig, parallel: ParallelConfig, rank: int) -> RankLayout:
    """Rank `rank`'s slices; raises ModelFormatError naming the dimension that does not split evenly."""
    world = parallel.world_size
    check_splits(config, parallel)
    kv_heads = config.num_kv_heads
    # With fewer KV heads than ranks, each KV head is replicated on the ranks whose query heads use it.
    kv_span = _even(kv_heads, world, rank) if world <= kv_heads else Span(rank // (world // kv_heads), 1)
    layout = RankLayout(rank, world, _even(config.num_heads, world, rank), kv_span,
                        _even(config.intermediate_size, world, rank), _even(config.vocab_size, world, rank))
    moe = config.moe
    if moe is None:
        return layout
    group_size = world // parallel.expert_parallel_size
    return RankLayout(
        **{**layout.__dict__,
           "experts": _even(moe.num_experts, parallel.expert_parallel_size, rank // group_size),
           "expert_intermediate": _even(moe.expert_intermediate_size, group_size, rank % group_size),
           "shared_intermediate": _even(moe.shared_expert_intermediate_size, world, rank)})


def check_splits(config: ModelConfig, parallel: ParallelConfig) -> None:
    world, ep = parallel.world_size, parallel.expert_parallel_size
    splits = [("attention heads (num_heads)", config.num_heads, world, "tensor_parallel_size"),
              ("vocabulary (vocab_size)", config.vocab_size, world, "tensor_parallel_size")]
    if config.moe is None or len(config.moe.layers) < config.num_layers:
        splits.append(("MLP width (intermediate_size)", config.intermediate_size, world, "tensor_parallel_size"))
    if config.moe is not None:
        moe = config.moe
        splits += [("experts (num_experts)", moe.num_experts, ep, "expert_parallel_size"),
                   ("expert width (expert_intermediate_size)", moe.expert_intermediate_size, world // ep,
                    "tensor_parallel_size / expert_parallel_size"),
                   ("shared expert width", moe.shared_expert_intermediate_size, world, "tensor_parallel_size")]
    for what, size, parts, setting in splits:
        if size % parts:
            raise ModelFormatError(
                f"the model's {what} of {size} does not split over {setting} {parts}; sizes that work: "
                f"{', '.join(map(str, divisors(size)))}")
    kv = config.num_kv_heads
    if kv % world and world % kv:
        working = sorted(set(divisors(kv)) | {m for m in divisors(config.num_heads) if m % kv == 0})
        raise ModelFormatError(
            f"the model's {kv} KV heads neither split over nor replicate onto tensor_parallel_size {world} "
            f"(one must divide the other); sizes that work: {', '.join(map(str, working))}")


def divisors(size: int) -> list[int]:
    return [d for d in range(1, size + 1) if size % d == 0] if size else [1]


def _even(size: int, parts: int, index: int) -> Span:
    share = size // parts
    return Span(index * share, share)
