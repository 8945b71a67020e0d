"""Build a linear layer of the requested precision from a loaded weight (float tensor or raw GGUF blocks).

Fused projections (q/k/v, gate/up) are concatenated along the output dimension by the model builder before
they get here, so every layer takes one weight. Without kilotok's CPU op, a layer that ATen's int4 or int8
kernels cannot hold (shape constraints) falls back to the next wider format: int4 -> int8 -> bf16.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn

from kilotok.kernels.backend import KernelBackend
from kilotok.layers.fp8_linear import Fp8Linear
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.tensor import QuantizedTensor, Weight, as_float
from kilotok.quant.formats import WeightFormat, weight_format
from kilotok.quant.fp8 import quantize_fp8
from kilotok.quant.int4 import GGUF_INT4_TYPES, Int4Linear
from kilotok.quant.int8 import Int8Linear
from kilotok.quant.lowbit import LowBitLinear, PackedWeight, lowbit_available, pack_float, pack_gguf

logger = logging.getLogger(__name__)


class DenseLinear(nn.Module):
    """A plain linear layer that stores its weight and computes in one float dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.weight = nn.Parameter(weight.detach().to(dtype).contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    @property
    def weight_bytes(self) -> int:
        params = [self.weight] + ([] if self.bias is None else [self.bias])
        return sum(p.numel() * p.element_size() for p in params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}"


def make_linear(weight: Weight, bias: torch.Tensor | None, fmt: WeightFormat | str,
                backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> nn.Module:
    """A linear layer y = x @ weight.T + bias in weight format `fmt` (quant/formats.py).

    Float formats hold the (dequantized) weight in their dtype. int4 and int8 run kilotok's multi-row CPU
    op (quant/lowbit.py) where it is available, keeping a GGUF Q4_0/Q4_1 (int4) or Q8_0 (int8) weight's
    own codes and scales and quantizing any other weight in blocks of 32; elsewhere ATen's kernels run:
    int8 requantized per output channel, int4 from the Q4_0/Q4_1 codes or quantized per group of 32. FP8
    formats keep or make an E4M3 weight and quantize activations per token, output in bf16; their product
    runs on `backend` (the other formats keep their CPU path), its Triton kernels launched with PDL where
    `pdl` asks (kernels/triton/pdl.py).
    Every returned module has `in_features`, `out_features` and `weight_bytes` (bytes read per forward).
    """
    fmt = weight_format(fmt)
    if fmt.linear == "fp8":
        return _fp8_linear(weight, bias, fmt, backend, pdl)
    if fmt.linear == "float":
        return DenseLinear(as_float(weight), bias, fmt.float_dtype)
    if lowbit_available():
        return LowBitLinear(_lowbit_weight(weight, 4 if fmt.linear == "int4" else 8), bias)
    out_features, in_features = weight.shape
    if fmt.linear == "int4" and Int4Linear.supports(out_features, in_features):
        if isinstance(weight, QuantizedTensor) and weight.qtype in GGUF_INT4_TYPES:
            return Int4Linear.from_gguf(weight, bias)
        return Int4Linear.from_float(as_float(weight), bias)
    if Int8Linear.supports(out_features, in_features):
        _log_fallback(fmt.linear, "int8", weight.shape)
        return Int8Linear.from_float(as_float(weight), bias)
    _log_fallback(fmt.linear, "bf16", weight.shape)
    return DenseLinear(as_float(weight), bias, torch.bfloat16)


def _lowbit_weight(weight: Weight, bits: int) -> PackedWeight:
    """A GGUF weight of the wanted width keeps its own codes and scales; anything else is quantized."""
    stored = GGUF_INT4_TYPES if bits == 4 else {GGMLQuantizationType.Q8_0}
    if isinstance(weight, QuantizedTensor) and weight.qtype in stored:
        return pack_gguf(weight)
    return pack_float(as_float(weight), bits)


def _fp8_linear(weight: Weight, bias: torch.Tensor | None, fmt: WeightFormat, backend: KernelBackend,
                pdl: bool) -> nn.Module:
    if isinstance(weight, Fp8Weight) and fmt.fp8_scheme in (None, weight.scheme):
        return Fp8Linear(weight, bias, backend=backend, pdl=pdl)
    scheme = fmt.fp8_scheme or fmt.fp8_unstored
    if scheme is None:
        return DenseLinear(as_float(weight), bias, torch.bfloat16)
    return Fp8Linear(quantize_fp8(as_float(weight), scheme), bias, backend=backend, pdl=pdl)


def _log_fallback(mode: str, used: str, shape: tuple[int, ...]) -> None:
    if mode != used:
        logger.info("weight of shape %s does not fit the %s kernel; using %s", tuple(shape), mode, used)
