"""RMSNorm over rows, optionally with the residual add before it fused in, and optionally without a weight
(Llama 4's QK L2 norm). One program per row; the math is fp32 whatever the activation dtype, as the
reference does (kernels/norm.py), and the residual sum is rounded to the activation dtype before it is
normed, so the two paths see the same residual stream."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer


@triton.jit
def _rms_norm_rows(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
                   x_row_stride, residual_row_stride, hidden, eps,
                   HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr,
                   USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK)
    in_row = columns < hidden
    if HAS_WEIGHT:  # the weight is no previous kernel's output: read it before waiting
        weight = tl.load(weight_ptr + columns, mask=in_row, other=0.0).to(tl.float32)
    wait_for_producer(USE_PDL)
    x = tl.load(x_ptr + row * x_row_stride + columns, mask=in_row, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_row_stride + columns, mask=in_row, other=0.0)
        summed = (x + residual.to(tl.float32)).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * hidden + columns, summed, mask=in_row)
        x = summed.to(tl.float32)
    release_dependents(USE_PDL)
    inverse_rms = tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps)
    normed = x * inverse_rms
    if HAS_WEIGHT:
        normed = weight * normed
    tl.store(out_ptr + row * hidden + columns, normed.to(out_ptr.dtype.element_ty), mask=in_row)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """A [rows, hidden] view with unit column stride (a copy only where no such view exists)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None, eps: float,
            out: torch.Tensor, residual_out: torch.Tensor | None, pdl: bool) -> None:
    hidden = x.shape[-1]
    rows = _as_rows(x)
    residual_rows = _as_rows(residual) if residual is not None else rows
    if rows.shape[0] == 0:
        return
    block = triton.next_power_of_2(hidden)
    use_pdl = pdl_enabled(pdl, x.device)
    _rms_norm_rows[(rows.shape[0],)](
        rows, residual_rows, weight if weight is not None else rows, out,
        residual_out if residual_out is not None else out,
        rows.stride(0), residual_rows.stride(0), hidden, eps,
        HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None, BLOCK=block, USE_PDL=use_pdl,
        num_warps=min(max(block // 512, 1), 16), **launch_options(use_pdl),
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, pdl: bool) -> torch.Tensor:
    """x normed over its last dimension (times `weight` where there is one)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, None, weight, eps, out, None, pdl)
    return out


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float,
                 pdl: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x), residual + x) in one pass over each row."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    residual_out = torch.empty(residual.shape, dtype=residual.dtype, device=residual.device)
    _launch(x, residual, weight, eps, out, residual_out, pdl)
    return out, residual_out
