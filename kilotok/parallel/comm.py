"""The collectives the parallel modules and the step channel run, on one process group. Each runs outside
any compiled graph (a compiled decode step breaks around it) and is timed, so `kilotok bench parallel`
can report the time a step spends in all-reduces. A collective that fails because another rank is gone
raises `ParallelError` naming what happened."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from kilotok.errors import ParallelError


@dataclass
class CommStats:
    all_reduce_seconds: float = 0.0
    all_reduce_calls: int = 0


@dataclass
class Communicator:
    rank: int
    world_size: int
    device: torch.device
    stats: CommStats = field(default_factory=CommStats)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @torch.compiler.disable
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of `x` (each rank's partial result), identical on every rank. Reduced
        in fp32 whatever the activation dtype, so the sum rounds once."""
        start = time.perf_counter()
        total = x.float().contiguous()
        _run(dist.all_reduce, total)
        self.stats.all_reduce_seconds += time.perf_counter() - start
        self.stats.all_reduce_calls += 1
        return total.to(x.dtype)

    @torch.compiler.disable
    def gather_columns(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0 gets every rank's `x` [R, n] side by side [R, world * n]; the others get their own."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)] if self.is_leader else None
        _run(dist.gather, x, parts, dst=0)
        return torch.cat(parts, dim=-1) if self.is_leader else x

    @torch.compiler.disable
    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        _run(dist.broadcast, x, src=0)
        return x

    @torch.compiler.disable
    def broadcast_object(self, value: object | None) -> object:
        box = [value]
        _run(dist.broadcast_object_list, box, src=0)
        return box[0]


def _run(collective, *args, **kwargs) -> None:
    try:
        collective(*args, **kwargs)
    except (RuntimeError, dist.DistError) as error:
        raise ParallelError(f"a rank of the parallel group stopped or cannot be reached ({error}); "
                            "the run cannot go on without it") from error
