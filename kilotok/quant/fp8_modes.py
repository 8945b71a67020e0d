"""The FP8 weight modes a model can be built in, and which weight each mode makes of a loaded one.

- `fp8-tensor`, `fp8-channel`, `fp8-block`: every linear weight in that scheme (a stored FP8 weight of
  another scheme is dequantized and requantized);
- `fp8`: stored FP8 weights as they are, every other linear weight in 128x128 blocks;
- `fp8-stored` (what `auto` picks for a checkpoint that holds FP8 weights): stored FP8 weights as they are,
  the layers the checkpoint left unquantized in bf16.
Activations are bf16 and quantized per token (per 128-wide group for blocks) inside each product.
"""

from __future__ import annotations

import torch

from kilotok.loader.tensor import QuantizedTensor
from kilotok.quant.fp8_weight import Fp8Weight, quantize_fp8

SCHEME_MODES = {"fp8-tensor": "tensor", "fp8-channel": "channel", "fp8-block": "block"}
STORED_FP8_MODE = "fp8-stored"
FP8_MODES = ("fp8", *SCHEME_MODES, STORED_FP8_MODE)


def fp8_weight_for_mode(weight: torch.Tensor | QuantizedTensor | Fp8Weight, mode: str) -> Fp8Weight:
    """The FP8 weight a layer in `mode` holds for a loaded weight (kept when it already fits)."""
    wanted = SCHEME_MODES.get(mode)
    if isinstance(weight, Fp8Weight) and (wanted is None or weight.scheme == wanted):
        return weight
    if isinstance(weight, (QuantizedTensor, Fp8Weight)):
        weight = weight.dequantize()
    return quantize_fp8(weight, wanted or "block")
