"""FP8 (E4M3) GEMM in Triton: y = quant(x) @ (w * w_scale).T + bias, with per-tensor, per-channel or block
weight scales and activations quantized per token or per group of the weight's column block.

Two kernels: one quantizes the activations (one program per row and scale group), one multiplies. The
product keeps one fp32 accumulator per output tile; each K step multiplies fp8 codes exactly (a tensor-core
FP8 dot where the GPU has one, else after widening the codes to fp16, which holds every E4M3 value) and adds
that step's partial sums times the step's activation and weight scales. The K step divides every scale
group along K, so the scales are constant inside a step, as in DeepSeek-style block-scaled GEMMs.

Codes are rounded to the E4M3 grid in fp32 arithmetic before the cast: the cast then has nothing left to
round, which keeps the interpreter (whose fp32 -> fp8 cast does not round to nearest) and the GPU identical.

With PDL (kernels/triton/pdl.py) the quantizer waits for the kernel that wrote x and the product for the
quantizer; each lets the next kernel launch once its reads are issued.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer
from kilotok.loader.fp8_weight import FP8_DTYPE, FP8_MAX, block_scheme

ROUNDING_MAGIC = tl.constexpr(12582912.0)
"""1.5 * 2^23: adding and subtracting it rounds an fp32 of magnitude below 2^22 to an integer, ties to even."""
MIN_NORMAL_EXPONENT = tl.constexpr(-6)
"""E4M3 has exponent bias 7: below 2^-6 its values are subnormal, spaced 2^-9 apart."""
E4M3_MAX = tl.constexpr(FP8_MAX)
QUANT_BLOCK = 128
BLOCK_M, BLOCK_N, MAX_BLOCK_K, MIN_BLOCK_K = 16, 64, 128, 16


@triton.jit
def round_to_e4m3(x):
    """Round fp32 values (|x| <= 448) to the nearest E4M3 value, ties to even, in fp32."""
    bits = x.to(tl.int32, bitcast=True)
    exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, MIN_NORMAL_EXPONENT)
    spacing = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits
    steps = x / spacing  # exact: spacing is a power of two
    return ((steps + ROUNDING_MAGIC) - ROUNDING_MAGIC) * spacing


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, K, group, stride_x, stride_q, stride_s, BLOCK: tl.constexpr,
                     USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    group_index = tl.program_id(1)
    start = group_index * group
    end = tl.minimum(start + group, K)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    wait_for_producer(USE_PDL)
    for k0 in range(start, end, BLOCK):
        offsets = k0 + tl.arange(0, BLOCK)
        values = tl.load(x_ptr + row * stride_x + offsets, mask=offsets < end, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(values))
    # The second pass reads the same group again (from cache): the next kernel waits for our end anyway.
    release_dependents(USE_PDL)
    block_max = tl.max(amax, axis=0)
    scale = tl.where(block_max > 0, block_max / E4M3_MAX, 1.0)
    tl.store(s_ptr + row * stride_s + group_index, scale)
    for k0 in range(start, end, BLOCK):
        offsets = k0 + tl.arange(0, BLOCK)
        mask = offsets < end
        values = tl.load(x_ptr + row * stride_x + offsets, mask=mask, other=0.0).to(tl.float32)
        codes = round_to_e4m3(tl.minimum(tl.maximum(values / scale, -E4M3_MAX), E4M3_MAX))
        tl.store(q_ptr + row * stride_q + offsets, codes.to(tl.float8e4nv), mask=mask)


@triton.jit
def _gemm_kernel(xq_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, M, N, K, x_group, w_rows, w_cols,
                 stride_xq, stride_xs, stride_w, stride_ws, stride_out,
                 HAS_BIAS: tl.constexpr, FP8_DOT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    scale_rows = cols // w_rows
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    wait_for_producer(USE_PDL)  # the codes and their scales are the quantizer's output
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(xq_ptr + rows[:, None] * stride_xq + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if not FP8_DOT:
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        partial = tl.dot(a, b, out_dtype=tl.float32)
        a_scale = tl.load(xs_ptr + rows * stride_xs + k0 // x_group, mask=row_ok, other=0.0)
        b_scale = tl.load(ws_ptr + scale_rows * stride_ws + k0 // w_cols, mask=col_ok, other=0.0)
        acc += partial * a_scale[:, None] * b_scale[None, :]
    release_dependents(USE_PDL)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None] * stride_out + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def quantize_activations(x: torch.Tensor, group: int, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 codes [M, K], fp32 scales [M, ceil(K / group)]), as kernels/fp8_gemm.py's
    reference computes them: each group's max |x| maps to 448."""
    rows, width = x.shape
    x = x.contiguous()
    groups = math.ceil(width / group)
    codes = torch.empty(rows, width, dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty(rows, groups, dtype=torch.float32, device=x.device)
    if rows:
        use_pdl = pdl_enabled(pdl, x.device)
        _quantize_kernel[(rows, groups)](x, codes, scales, width, group, x.stride(0), codes.stride(0),
                                         scales.stride(0), BLOCK=min(QUANT_BLOCK, triton.next_power_of_2(group)),
                                         USE_PDL=use_pdl, **launch_options(use_pdl))
    return codes, scales


def fp8_gemm(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
             bias: torch.Tensor | None, out_dtype: torch.dtype, pdl: bool = False,
             x_group: int | None = None) -> torch.Tensor:
    """x [M, K] (any float dtype) times the FP8 weight `data` [N, K] with block `scale` -> [M, N].

    Activations are scaled per `x_group` columns; by default per token, or per column block of a block-scaled
    weight (what the reference computes). `pdl`: both launches may overlap the previous kernel's tail."""
    out_features, in_features = data.shape
    if x_group is None:
        x_group = block[1] if block_scheme(data.shape, block) == "block" else in_features
    block_k = step_along_k(in_features, (x_group, block[1]))
    codes, x_scales = quantize_activations(x, x_group, pdl)
    rows = x.shape[0]
    out = torch.empty(rows, out_features, dtype=out_dtype, device=x.device)
    if rows == 0:
        return out
    data = data.contiguous()
    scale = scale.contiguous()
    grid = (triton.cdiv(rows, BLOCK_M), triton.cdiv(out_features, BLOCK_N))
    use_pdl = pdl_enabled(pdl, x.device)
    _gemm_kernel[grid](
        codes, x_scales, data, scale, bias if bias is not None else out, out, rows, out_features, in_features,
        x_group, block[0], block[1], codes.stride(0), x_scales.stride(0), data.stride(0), scale.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, FP8_DOT=fp8_dot_supported(x.device),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k, USE_PDL=use_pdl, **launch_options(use_pdl),
    )
    return out


def step_along_k(in_features: int, groups: tuple[int, ...]) -> int:
    """The largest power-of-two K step (at most 128) inside which every scale group along K is constant."""
    step = MAX_BLOCK_K
    while any(g < in_features and g % step for g in groups) and step > MIN_BLOCK_K:
        step //= 2
    if any(g < in_features and g % step for g in groups):
        raise ValueError(f"FP8 scale groups {groups} along K need a multiple of {MIN_BLOCK_K} columns")
    return step


def fp8_dot_supported(device: torch.device) -> bool:
    """Tensor-core FP8 dots need compute capability 8.9 (Ada) or newer; the interpreter has them too."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)

