"""Weight formats: the one description of what `--dtype` means for every part of a model.

A format says how linear layers hold their weights (a float dtype, weight-only int8 or int4, or FP8
E4M3 weights with dynamically quantized activations), the dtype of activations and of the KV cache,
the format of the LM head, and the float dtype of what it leaves unquantized (routers; routed experts
except under FP8 formats that name a scheme, which quantize them in it).

- float formats `fp32`, `bf16`, `fp16`: every weight in that dtype; `fp32` is the exact reference path.
- `int8`: weight-only, per output channel, bf16 activations.
- `int4`: weight-only in groups of 32, keeping a GGUF's Q4_0/Q4_1 codes as stored; activations in fp32,
  so compiled graphs have no bf16 intermediates whose rounding would depend on the graph's batch size, and
  batched or speculative greedy output equals plain greedy output bit for bit. The KV cache is bf16: a
  value is rounded once, where it is stored, the same way whatever the batch, and attention reads half the
  bytes (at long contexts and many rows its reads rival the weights'). Its head is int8: the head is the
  largest single matrix, and 4 bits would requantize it lossily.
- `fp8-tensor`, `fp8-channel`, `fp8-block`: every linear weight in that FP8 scheme (a stored FP8 weight of
  another scheme is dequantized and requantized); `fp8`: stored FP8 weights as they are, the rest in
  128x128 blocks; `fp8-stored` (what `auto` picks for a checkpoint holding FP8 weights): stored FP8 weights
  as they are, the layers the checkpoint left unquantized in bf16. Activations are bf16 and quantized per
  token (per 128 group for blocks) inside each product.

On a CUDA device only the float and FP8 formats run: int8 and int4 are products of CPU kernels (kilotok's
low-bit op, ATen's CPU int4 packing). There `auto` takes a GGUF's 4-bit weights as bf16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kilotok.errors import InvalidRequestError
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.tensor import QuantizedTensor, Weight
from kilotok.quant.int4 import GGUF_INT4_TYPES

AUTO = "auto"
CUDA_LINEAR_KINDS = frozenset({"float", "fp8"})
"""The kinds of linear layer with a CUDA product; int8 and int4 run CPU kernels only."""


@dataclass(frozen=True)
class WeightFormat:
    name: str
    linear: str
    """How linear layers hold their weights: "float", "int8", "int4" or "fp8"."""
    activation_dtype: torch.dtype
    """Activations, and the KV cache unless kv_dtype says otherwise."""
    head: str
    """The format the LM head is built in."""
    float_dtype: torch.dtype = torch.bfloat16
    """The dtype of float linear layers, routers, and routed experts outside FP8 formats."""
    fp8_scheme: str | None = None
    """FP8 formats: the scheme every linear weight is quantized to; None keeps stored FP8 weights."""
    fp8_unstored: str | None = None
    """FP8 formats without a scheme: the scheme weights not stored in FP8 get (None: they stay bf16)."""
    kv_dtype: torch.dtype | None = None
    """The KV cache's dtype where it differs from the activations'."""

    @property
    def kv_cache_dtype(self) -> torch.dtype:
        return self.kv_dtype or self.activation_dtype

    def runs_on(self, device: torch.device | str) -> bool:
        return torch.device(device).type != "cuda" or self.linear in CUDA_LINEAR_KINDS

    @property
    def float_format(self) -> WeightFormat:
        """The float format of the parts this format leaves unquantized."""
        return next(f for f in FORMATS.values() if f.linear == "float" and f.float_dtype == self.float_dtype)


def _fp8(name: str, scheme: str | None, unstored: str | None = None) -> WeightFormat:
    return WeightFormat(name, "fp8", torch.bfloat16, "fp8-stored", fp8_scheme=scheme, fp8_unstored=unstored)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("fp32", "float", torch.float32, "fp32", float_dtype=torch.float32),
    WeightFormat("bf16", "float", torch.bfloat16, "bf16"),
    WeightFormat("fp16", "float", torch.float16, "fp16", float_dtype=torch.float16),
    WeightFormat("int8", "int8", torch.bfloat16, "int8"),
    WeightFormat("int4", "int4", torch.float32, "int8", kv_dtype=torch.bfloat16),
    _fp8("fp8", None, unstored="block"),
    _fp8("fp8-tensor", "tensor"),
    _fp8("fp8-channel", "channel"),
    _fp8("fp8-block", "block"),
    _fp8("fp8-stored", None),
)}
DTYPE_CHOICES = (AUTO, *(name for name in FORMATS if name != "fp8-stored"))
"""What `--dtype` and `EngineConfig.dtype` accept."""


def check_dtype(name: str) -> None:
    if name not in DTYPE_CHOICES:
        raise InvalidRequestError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_CHOICES)}", param="dtype")


def weight_format(name: str | WeightFormat) -> WeightFormat:
    if isinstance(name, WeightFormat):
        return name
    if name not in FORMATS:
        check_dtype(name)
    return FORMATS[name]


def check_dtype_device(name: str | WeightFormat, device: torch.device | str) -> None:
    """Refuse a weight format whose products have no kernel on `device` (int8 and int4 on CUDA)."""
    if name == AUTO:
        return
    fmt = weight_format(name)
    if not fmt.runs_on(device):
        usable = ", ".join(n for n in DTYPE_CHOICES if n == AUTO or FORMATS[n].runs_on(device))
        raise InvalidRequestError(f"dtype {fmt.name!r} runs on the CPU only (its products are CPU kernels); on "
                                  f"{torch.device(device).type} choose one of {usable}, or --device cpu",
                                  param="dtype")


def resolve_weight_format(name: str | WeightFormat, weights: Mapping[str, Weight],
                          device: torch.device | str = "cpu") -> WeightFormat:
    """`auto` runs a GGUF's 4-bit weights and FP8 checkpoints as they are stored, other checkpoints in bf16;
    on a CUDA device a GGUF's 4-bit weights run in bf16 (int4 is a CPU format)."""
    check_dtype_device(name, device)
    if name != AUTO:
        return weight_format(name)
    if any(isinstance(w, Fp8Weight) for w in weights.values()):
        return FORMATS["fp8-stored"]
    stored = {w.qtype for w in weights.values() if isinstance(w, QuantizedTensor)}
    fmt = FORMATS["int4" if stored & GGUF_INT4_TYPES else "bf16"]
    return fmt if fmt.runs_on(device) else FORMATS["bf16"]
