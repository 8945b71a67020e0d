"""Weight-only int4 linear layer on torch's CPU int4 kernel, fed straight from GGUF Q4_0 / Q4_1 blocks.

The kernel computes w = (q - 8) * scale + zero per group of `group_size` weights along K, with q in 0..15,
bf16 scales and zeros, and bf16 activations. GGUF Q4_1 (w = d * q + m) maps onto it with scale = d and
zero = m + 8d, Q4_0 (w = d * (q - 8)) with zero = 0, so the file's codes are used as they are. The only
change is rounding d and m + 8d from float16 to bf16 (relative error below 2^-9 of each).
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import nn

from kilotok.errors import ModelFormatError
from kilotok.loader.tensor import QuantizedTensor
from kilotok.quant.gguf_blocks import GROUP_SIZE, unpack_blocks

GROUP_SIZES = (32, 64, 128, 256)
"""Group sizes torch's CPU int4 kernel accepts."""
N_MULTIPLE = 16
"""The CPU packing op tiles the output dimension by 16."""
CODE_OFFSET = 8
"""The kernel's fixed zero point: w = (q - 8) * scale + zero."""
GGUF_INT4_TYPES = frozenset({GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1})


class Int4Linear(nn.Module):
    """y = x @ w.T + bias with w held as packed 4-bit codes and bf16 (scale, zero) per group."""

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
    ) -> None:
        """codes: (N, K) integers in 0..15; scales, zeros: (N, K / group_size) in the kernel's convention."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        check_int4_shape(self.out_features, self.in_features, group_size)
        self.group_size = group_size
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous()
        self.register_buffer("packed_weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    @staticmethod
    def supports(out_features: int, in_features: int, group_size: int = GROUP_SIZE) -> bool:
        return (
            group_size in GROUP_SIZES
            and in_features % group_size == 0
            and out_features % N_MULTIPLE == 0
            and out_features > 0
        )

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = GROUP_SIZE
    ) -> Int4Linear:
        """Asymmetric min/max quantization per group along K, as GGUF Q4_1 does."""
        out_features, in_features = weight.shape
        check_int4_shape(out_features, in_features, group_size)
        groups = weight.detach().float().reshape(out_features, -1, group_size)
        low = groups.amin(dim=-1)
        # Round scale and zero to the kernel's bf16 first, then pick codes against the rounded values, so
        # the only error left is the 4-bit rounding itself.
        step = _round_bf16((groups.amax(dim=-1) - low) / 15)
        zero = _round_bf16(low + CODE_OFFSET * step)
        base = zero - CODE_OFFSET * step
        # A constant group has step 0: every code is 0 and the weight is `low` (as rounded to bf16).
        inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
        codes = torch.round((groups - base[..., None]) * inverse[..., None]).clamp_(0, 15)
        return cls(codes.reshape(out_features, in_features), step, zero, group_size, bias)

    @classmethod
    def from_gguf(cls, tensor: QuantizedTensor, bias: torch.Tensor | None = None) -> Int4Linear:
        """Use a Q4_0 / Q4_1 weight's own codes and scales (no re-quantization)."""
        if tensor.qtype not in GGUF_INT4_TYPES:
            raise ModelFormatError(
                f"Int4Linear.from_gguf takes Q4_0 or Q4_1 weights, got {tensor.qtype.name}; "
                "use Int4Linear.from_float on the dequantized weight"
            )
        unpacked = unpack_blocks(tensor)
        scales = torch.from_numpy(unpacked.scales)
        zeros = torch.from_numpy(unpacked.offsets) + CODE_OFFSET * scales
        return cls(torch.from_numpy(unpacked.codes), scales, zeros, GROUP_SIZE, bias)

    @property
    def weight_bytes(self) -> int:
        buffers = [self.packed_weight, self.scales_and_zeros] + ([] if self.bias is None else [self.bias])
        return sum(b.numel() * b.element_size() for b in buffers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed_weight, self.group_size, self.scales_and_zeros
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


def check_int4_shape(out_features: int, in_features: int, group_size: int) -> None:
    if not Int4Linear.supports(out_features, in_features, group_size):
        raise ModelFormatError(
            f"int4 layers need group_size in {GROUP_SIZES}, in_features a multiple of group_size and "
            f"out_features a multiple of {N_MULTIPLE}; got a {out_features}x{in_features} weight with "
            f"group_size {group_size}: load this layer in int8 or bf16 instead"
        )


def _round_bf16(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.bfloat16).float()
