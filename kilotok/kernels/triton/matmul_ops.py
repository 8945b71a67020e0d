"""The FP8 GEMM and fused MoE kernels registered as torch ops, so that `torch.compile` treats each call as one
opaque op with a known output shape and dtype (the fake implementations below), and CUDA graph capture records
its launches, rather than tracing into the launchers' Python.

Ops take tensors, ints and flags only: an `Fp8Weight` travels as its codes, its scales and its block shape
(the float MoE passes no scales)."""

from __future__ import annotations

import torch

from kilotok.kernels.triton import fp8_gemm as triton_fp8
from kilotok.kernels.triton import fused_moe as triton_moe
from kilotok.loader.fp8_weight import Fp8Weight


@torch.library.custom_op("kilotok::triton_fp8_gemm", mutates_args=())
def fp8_gemm(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, block: list[int], bias: torch.Tensor | None,
             out_dtype: torch.dtype, pdl: bool) -> torch.Tensor:
    """x [M, K] times the FP8 weight `data` [N, K] -> [M, N] in `out_dtype` (kernels/triton/fp8_gemm.py)."""
    return triton_fp8.fp8_gemm(x, data, scale, (block[0], block[1]), bias, out_dtype, pdl)


@fp8_gemm.register_fake
def _(x, data, scale, block, bias, out_dtype, pdl):
    return x.new_empty((x.shape[0], data.shape[0]), dtype=out_dtype)


def _expert_weight(data: torch.Tensor, scale: torch.Tensor | None, block: list[int]) -> torch.Tensor | Fp8Weight:
    return data if scale is None else Fp8Weight(data, scale, (block[0], block[1]))


@torch.library.custom_op("kilotok::triton_fused_moe", mutates_args=())
def fused_moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
              gate_up_scale: torch.Tensor | None, gate_up_block: list[int], down: torch.Tensor,
              down_scale: torch.Tensor | None, down_block: list[int], gate_on_input: bool, pdl: bool) -> torch.Tensor:
    """kernels/triton/fused_moe.py's `fused_moe` -> [T, d] in x's dtype; FP8 experts come with their scales."""
    return triton_moe.fused_moe(x, weights, experts, _expert_weight(gate_up, gate_up_scale, gate_up_block),
                                _expert_weight(down, down_scale, down_block), gate_on_input, pdl)


@fused_moe.register_fake
def _(x, weights, experts, gate_up, gate_up_scale, gate_up_block, down, down_scale, down_block, gate_on_input, pdl):
    return torch.empty_like(x, memory_format=torch.contiguous_format)
