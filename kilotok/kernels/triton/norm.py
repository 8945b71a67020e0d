"""RMSNorm over rows, optionally with the residual add before it fused in, and optionally without a weight
(Llama 4's QK L2 norm). One program per row; the math is fp32 whatever the activation dtype, as the
reference does (kernels/norm.py), and the residual sum is rounded to the activation dtype before it is
normed, so the two paths see the same residual stream."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_rows(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
                   x_row_stride, residual_row_stride, hidden, eps,
                   HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr,
                   USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK)
    in_row = columns < hidden
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    x = tl.load(x_ptr + row * x_row_stride + columns, mask=in_row, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_row_stride + columns, mask=in_row, other=0.0)
        summed = (x + residual.to(tl.float32)).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * hidden + columns, summed, mask=in_row)
        x = summed.to(tl.float32)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + columns, mask=in_row, other=0.0).to(tl.float32)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    inverse_rms = tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps)
    normed = x * inverse_rms
    if HAS_WEIGHT:
        normed = weight * normed
    tl.store(out_ptr + row * hidden + columns, normed.to(out_ptr.dtype.element_ty), mask=in_row)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """A [rows, hidden] view with unit column stride (a copy only where no such view exists)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None,
             use_pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(normed, residual + x) over the last dimension; the second is None without a residual."""
    hidden = x.shape[-1]
    rows = _as_rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    residual_rows = _as_rows(residual) if residual is not None else rows
    residual_out = torch.empty(x.shape, dtype=residual.dtype, device=x.device) if residual is not None else None
    block = triton.next_power_of_2(hidden)
    if rows.shape[0]:
        _rms_norm_rows[(rows.shape[0],)](
            rows, residual_rows, weight if weight is not None else rows, out,
            residual_out if residual_out is not None else out,
            rows.stride(0), residual_rows.stride(0), hidden, eps,
            HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
            BLOCK=block, USE_PDL=use_pdl, num_warps=min(max(block // 512, 1), 16),
        )
    return out, residual_out
