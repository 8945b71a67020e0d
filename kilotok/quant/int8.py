"""Weight-only int8 linear layer: int8 weights with one bf16 scale per output channel, bf16 activations.

At batch 1 the CPU is bound by weight bytes read per token; int8 halves them against bf16. The matmul is
torch's fused `_weight_int8pack_mm`, which dequantizes on the fly.
"""

from __future__ import annotations

import torch
from torch import nn

from kilotok.errors import ModelFormatError
from kilotok.loader.tensor import QuantizedTensor

K_MULTIPLE = 16
"""torch's CPU kernel reads activations in 16-wide vectors with no tail: other K crash or give NaN."""


class Int8Linear(nn.Module):
    """y = x @ (w_int8 * scale[:, None]).T + bias, computed in bf16."""

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        check_int8_shape(self.out_features, self.in_features)
        self.register_buffer("weight", weight_int8.contiguous())
        self.register_buffer("scales", scales.to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    @staticmethod
    def supports(out_features: int, in_features: int) -> bool:
        return in_features % K_MULTIPLE == 0 and out_features > 0

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """Symmetric per-output-channel quantization: scale = max|w| / 127 over each row."""
        check_int8_shape(*weight.shape)
        return cls(*quantize_int8_per_channel(weight), bias)

    @classmethod
    def from_gguf(cls, tensor: QuantizedTensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """Requantize a GGUF weight per output channel.

        Q8_0 has a scale per 32 weights, which no single per-row scale reproduces: requantizing the
        dequantized weight adds at most half a per-row step (max|row| / 254) to each weight, about the size
        of Q8_0's own rounding, and far below the 4-bit error of the rest of a typical file.
        """
        return cls.from_float(tensor.dequantize(), bias)

    @property
    def weight_bytes(self) -> int:
        buffers = [self.weight, self.scales] + ([] if self.bias is None else [self.bias])
        return sum(b.numel() * b.element_size() for b in buffers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch._weight_int8pack_mm(flat, self.weight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}"


def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes and bf16 scales: w ~ codes * scale[:, None], scale = max|row| / 127."""
    weight = weight.detach().float()
    # Round the scale to bf16 first and quantize with that rounded scale, so the codes match the scale
    # the kernel applies; |w| / scale stays below 127.5 (bf16 rounding is under 2^-9), so no clipping.
    scales = (weight.abs().amax(dim=1) / 127).to(torch.bfloat16)
    divisor = scales.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    codes = torch.round(weight / divisor).clamp_(-127, 127).to(torch.int8)
    return codes, scales


def check_int8_shape(out_features: int, in_features: int) -> None:
    if not Int8Linear.supports(out_features, in_features):
        raise ModelFormatError(
            f"int8 weight-only layers need in_features to be a multiple of {K_MULTIPLE}, got a "
            f"{out_features}x{in_features} weight; load this layer in bf16 instead"
        )
