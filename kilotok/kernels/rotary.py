"""RoPE on q and k by each token's position, on halves (Llama) or on adjacent pairs (Llama 4's complex form),
optionally followed by Llama 4's QK L2 norm: the PyTorch reference, or the Triton kernel
(kernels/triton/rotary.py) that rotates in place and fuses the norm. The cos/sin tables are [positions, D/2]
in fp32 (layers/rotary.py builds them, with Llama 3 frequency scaling)."""

from __future__ import annotations

import torch

from kilotok.errors import InvalidRequestError
from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.norm import l2_normalize


def rotate_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on pairs (x[j], x[j + D/2]), in fp32."""
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
    return rotated.to(x.dtype)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent pairs (x[2i], x[2i+1]): the complex product Llama 4 computes, in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def rope_reference(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor,
                   sin_table: torch.Tensor, interleaved: bool,
                   l2_norm_eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    cos = cos_table[positions].unsqueeze(1)
    sin = sin_table[positions].unsqueeze(1)
    rotate = rotate_pairs if interleaved else rotate_halves
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    if l2_norm_eps is not None:
        q, k = l2_normalize(q, l2_norm_eps), l2_normalize(k, l2_norm_eps)
    return q, k


def apply_rope(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor,
               sin_table: torch.Tensor, interleaved: bool = False, l2_norm_eps: float | None = None,
               backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D] and k [T, Hkv, D] rotated by `positions` [T], then L2-normed over D when `l2_norm_eps`
    is set. The Triton backend writes into q and k and returns them: use the returned tensors, and do not
    count on the inputs keeping their values. `pdl`: the Triton kernel may overlap its launch with the
    previous kernel's tail (kernels/triton/pdl.py)."""
    if q.shape[-1] % 2 or q.shape[-1] != 2 * cos_table.shape[-1]:
        raise InvalidRequestError(f"RoPE tables of {cos_table.shape[-1]} frequencies do not fit head_dim "
                                  f"{q.shape[-1]}")
    if backend is KernelBackend.TORCH:
        return rope_reference(positions, q, k, cos_table, sin_table, interleaved, l2_norm_eps)
    from kilotok.kernels.triton import fused_ops  # Triton is an optional extra: imported on first use

    fused_ops.apply_rope_(positions, q, k, cos_table, sin_table, interleaved, l2_norm_eps, pdl)
    return q, k
