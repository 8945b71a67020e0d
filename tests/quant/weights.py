"""Weights that are hard to quantize well, shared by the quantization tests."""

from __future__ import annotations

import torch


def spread_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Rows of very different magnitudes, an outlier column (one outlier per row), and an all-zero row."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * torch.logspace(-3, 1, rows)[:, None]
    weight[:, 3] *= 20
    weight[-1] = 0
    return weight
