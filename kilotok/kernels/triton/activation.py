"""SwiGLU on a fused gate/up projection's output: out = silu(gate) * up, with gate the first half of each
row and up the second. silu is computed in fp32 and rounded to the activation dtype before the product,
as the reference's two ops round (kernels/activation.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer

BLOCK = 1024


@triton.jit
def _swiglu_rows(gate_up_ptr, out_ptr, row_stride, width, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = columns < width
    wait_for_producer(USE_PDL)
    gate = tl.load(gate_up_ptr + row * row_stride + columns, mask=in_row, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * row_stride + width + columns, mask=in_row, other=0.0)
    release_dependents(USE_PDL)
    dtype = out_ptr.dtype.element_ty
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype)
    tl.store(out_ptr + row * width + columns, (activated.to(tl.float32) * up.to(tl.float32)).to(dtype), mask=in_row)


def swiglu(gate_up: torch.Tensor, pdl: bool) -> torch.Tensor:
    width = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty((*gate_up.shape[:-1], width), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0]:
        use_pdl = pdl_enabled(pdl, gate_up.device)
        _swiglu_rows[(rows.shape[0], triton.cdiv(width, BLOCK))](rows, out, rows.stride(0), width, BLOCK=BLOCK,
                                                                 USE_PDL=use_pdl, **launch_options(use_pdl))
    return out
