"""The index of each row's largest value over the last dimension, exactly as `torch.argmax` gives it (the
first of equal maxima; a NaN counts as the largest), in the form that is fast on the CPU.

torch's CPU argmax carries an index along with every value it compares and runs as scalar code; a max
alone vectorizes. So on the CPU the row is cut into blocks of `BLOCK` values: the maximum of every block
(vectorized), the first block whose maximum is the row's, then the argmax within that one block. The
first block holding the row's maximum holds its first occurrence, so ties resolve as torch's do, and a
NaN propagates through the block maxima to the block that holds the first one. Greedy sampling and
greedy verification take an argmax over the whole vocabulary for every row, where this is the
difference between a few and a few hundred microseconds (docs/benchmarks.md). Elsewhere, and for
lengths that are not a multiple of the block, it is `torch.argmax`.
"""

from __future__ import annotations

import torch

BLOCK = 128


def argmax_rows(values: torch.Tensor) -> torch.Tensor:
    """values [..., N] -> [...] int64: the index of each row's maximum."""
    length = values.shape[-1]
    if values.device.type != "cpu" or length % BLOCK or length < 2 * BLOCK:
        return values.argmax(dim=-1)
    blocks = values.unflatten(-1, (length // BLOCK, BLOCK))
    best = blocks.amax(dim=-1).argmax(dim=-1, keepdim=True)
    within = blocks.gather(-2, best[..., None].expand(*best.shape, BLOCK)).squeeze(-2).argmax(dim=-1)
    return best.squeeze(-1) * BLOCK + within
