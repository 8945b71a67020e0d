"""Rotary position embedding, with Llama 3 frequency scaling: the rotate-half convention (Llama), and
rotation of adjacent pairs (Llama 4's complex form). The tables are built here; the rotation (and Llama 4's
QK L2 norm after it) runs through kernels/rotary.py by the kernel backend chosen when the model is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.rotary import apply_rope


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 style frequency scaling (`rope_type: llama3`); the config readers reject other kinds."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv_freq.float()
    # Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, interpolated, scaled).float()


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables indexed by each token's position, so batches of any layout work."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling | None,
                 backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> None:
        super().__init__()
        self.backend = backend
        self.pdl = pdl
        inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, interleaved: bool = False,
                l2_norm_eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq, D], k: [T, Hkv, D], positions: [T]; `interleaved`: rotate adjacent pairs; `l2_norm_eps`:
        L2-norm each head after rotating (Llama 4). Use the returned tensors: q and k may be rotated in place."""
        return apply_rope(positions, q, k, self.cos, self.sin, interleaved, l2_norm_eps, self.backend, self.pdl)
