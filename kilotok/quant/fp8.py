"""FP8 (E4M3) weight quantization: a float weight to an `Fp8Weight` in one of the three scale schemes.

The products over such weights (with dynamically quantized activations) are kernels/fp8_gemm.py; the
linear layer built on them is layers/fp8_linear.py.
"""

from __future__ import annotations

import torch

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import (
    DEFAULT_BLOCK,
    FP8_DTYPE,
    FP8_MAX,
    Fp8Weight,
    expand_scale,
    fp8_scales,
    scale_grid_shape,
    scheme_block,
)


def quantize_fp8(weight: torch.Tensor, scheme: str, block: tuple[int, int] = DEFAULT_BLOCK,
                 name: str = "weight") -> Fp8Weight:
    """Symmetric E4M3 quantization: each block's max |w| maps to 448, values round to nearest even."""
    if weight.dim() < 2:
        raise ModelFormatError(
            f"cannot quantize {name} of shape {tuple(weight.shape)} to FP8: weights need (out, in) dims"
        )
    block = scheme_block(weight.shape, scheme, block)
    weight = weight.detach().float()
    rows, cols = weight.shape[-2:]
    grid = scale_grid_shape(weight.shape, block)
    # Zero-pad to whole blocks only to take each block's max; the stored weight keeps its own shape.
    padded = torch.nn.functional.pad(weight.abs(), (0, grid[-1] * block[1] - cols, 0, grid[-2] * block[0] - rows))
    blocks = padded.reshape(*grid[:-2], grid[-2], block[0], grid[-1], block[1])
    scale = fp8_scales(blocks.amax(dim=(-3, -1)))
    scaled = weight / expand_scale(scale, block, weight.shape)
    return Fp8Weight(scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale, block)

