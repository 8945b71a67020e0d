"""A linear layer over an FP8 (E4M3) weight, its product run by kernels/fp8_gemm.py on the chosen backend."""

from __future__ import annotations

import torch
from torch import nn

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.fp8_gemm import fp8_gemm
from kilotok.loader.fp8_weight import Fp8Weight


class Fp8Linear(nn.Module):
    """A linear layer over an FP8 weight; products and output in `out_dtype` (bf16 or fp32). `pdl`: the Triton
    kernels may overlap their launches with the previous kernel's tail (kernels/triton/pdl.py)."""

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype = torch.bfloat16, backend: KernelBackend = KernelBackend.TORCH,
                 pdl: bool = False) -> None:
        super().__init__()
        if weight.data.dim() != 2:
            raise ValueError(f"an FP8 linear layer takes a 2-D weight, got shape {weight.shape}")
        self.out_features, self.in_features = weight.shape
        self.block = weight.block
        self.scheme = weight.scheme
        self.out_dtype = out_dtype
        self.backend = backend
        self.pdl = pdl
        self.register_buffer("weight", weight.data.contiguous())
        self.register_buffer("weight_scale", weight.scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))

    @property
    def weight_bytes(self) -> int:
        buffers = [self.weight, self.weight_scale] + ([] if self.bias is None else [self.bias])
        return sum(b.numel() * b.element_size() for b in buffers)

    def fp8_weight(self) -> Fp8Weight:
        return Fp8Weight(self.weight, self.weight_scale, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_gemm(x, self.weight, self.weight_scale, self.block, self.bias, self.out_dtype, self.backend,
                        self.pdl)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"block={self.block}, out_dtype={self.out_dtype}, backend={self.backend.value}")
