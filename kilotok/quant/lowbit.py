"""Multi-row linear layers over 4-bit and 8-bit weights on the CPU, where extra rows cost little.

The ops `kilotok::q4_linear` and `kilotok::q8_linear` are C++ with AVX-512 VNNI integer dot products
(csrc/lowbit_linear.cpp: the math and the layout are explained there). kilotok builds them itself the
first time they are needed (kilotok/native.py) and registers fake
implementations, so a compiled graph keeps each call as one op. Where the build fails or the processor
lacks the instructions, `lowbit_available()` is False, one line says why, and the layers fall back to
ATen's int4 and int8 kernels (layers/linear.py).

Weights are repacked once, from the GGUF's own Q4_0/Q4_1/Q8_0 blocks (no re-quantization) or from float
weights quantized in blocks of 32. `reference_lowbit_linear` computes what the ops compute in plain
PyTorch, for tests and for tensors the ops cannot take.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kilotok.loader.tensor import QuantizedTensor
from kilotok.native import load_cpu_ops
from kilotok.quant.gguf_blocks import GROUP_SIZE, unpack_blocks

SOURCE = Path(__file__).parent / "csrc" / "lowbit_linear.cpp"
TILE = 16
"""Output columns per tile: one int32 lane of a 512-bit register each."""


@functools.cache
def lowbit_available() -> bool:
    """Build and load the ops once per process; False, with one line on stderr, where they cannot run or
    KILOTOK_LOWBIT_KERNELS=0 asks for ATen's kernels (to compare the two)."""
    if not load_cpu_ops([SOURCE], "kilotok_lowbit", "CPU low-bit kernels", "KILOTOK_LOWBIT_KERNELS",
                        "using ATen's int4/int8 kernels", lambda: torch.ops.kilotok.lowbit_cpu_supported(),
                        "AVX-512 VNNI"):
        return False
    _register_fakes()
    return True


def _register_fakes() -> None:
    def fake(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, extra: torch.Tensor,
             out_features: int) -> torch.Tensor:
        return x.new_empty((x.shape[0], out_features))

    for name in ("kilotok::q4_linear", "kilotok::q8_linear"):
        torch.library.register_fake(name)(fake)


@dataclass(frozen=True)
class PackedWeight:
    """A weight in the ops' layout: tiles of 16 output rows (the last one padded with zero rows), blocks of
    32 inputs (the last one padded with zero columns).

    bits 4: codes uint8 [tiles, blocks, 4, 64], two steps per byte; extra: mins [tiles, blocks, 16], in the
    scales' dtype.
    bits 8: codes int8 [tiles, blocks, 8, 64]; extra: int16 column sums [tiles, blocks, 16].
    scales: [tiles, blocks, 16], float16 where every scale (and min) is exactly a float16, as GGUF's are,
    else float32. Step s of a block holds inputs 4s..4s+3 of the tile's 16 rows.
    """

    bits: int
    codes: torch.Tensor
    scales: torch.Tensor
    extra: torch.Tensor
    out_features: int
    in_features: int


def pack(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> PackedWeight:
    """w[n, k] = scales[n, k // 32] * codes[n, k] + offsets[n, k // 32], with codes uint8 in 0..15 (4 bits)
    or int8 (8 bits, whose offsets must be zero)."""
    out_features, in_features = codes.shape
    bits = 4 if codes.dtype == torch.uint8 else 8
    if bits == 8 and bool(offsets.any()):
        raise ValueError("8-bit weights are symmetric: their offsets must be zero")
    tiles, blocks = -(-out_features // TILE), -(-in_features // GROUP_SIZE)
    padded = codes.new_zeros((tiles * TILE, blocks * GROUP_SIZE))
    padded[:out_features, :in_features] = codes
    # [tiles, 16 rows, blocks, 8 steps, 4 inputs] -> [tiles, blocks, steps, rows, inputs]
    steps = padded.view(tiles, TILE, blocks, 8, 4).permute(0, 2, 3, 1, 4).reshape(tiles, blocks, 8, 64)

    # At one row a step streams the weights: float16 scales and mins are a third of the 4-bit weights' bytes
    # where float32 ones would be half. Only where that loses nothing.
    exact = all(torch.equal(values.float().half().float(), values.float()) for values in (scales, offsets))
    dtype = torch.float16 if exact else torch.float32

    def per_tile(values: torch.Tensor) -> torch.Tensor:
        grid = values.new_zeros((tiles * TILE, blocks), dtype=dtype)
        grid[:out_features, : values.shape[1]] = values
        return grid.view(tiles, TILE, blocks).transpose(1, 2).contiguous()

    if bits == 4:
        nibbles = steps[:, :, 0::2] | (steps[:, :, 1::2] << 4)
        return PackedWeight(4, nibbles.contiguous(), per_tile(scales), per_tile(offsets), out_features, in_features)
    # At most 32 * 128 in magnitude.
    sums = padded.view(tiles, TILE, blocks, GROUP_SIZE).sum(dim=-1, dtype=torch.int32).transpose(1, 2)
    return PackedWeight(8, steps.contiguous(), per_tile(scales), sums.to(torch.int16).contiguous(), out_features,
                        in_features)


def pack_gguf(tensor: QuantizedTensor) -> PackedWeight:
    """A Q4_0, Q4_1 or Q8_0 weight with its own codes and scales."""
    groups = unpack_blocks(tensor)
    return pack(torch.from_numpy(groups.codes), torch.from_numpy(groups.scales), torch.from_numpy(groups.offsets))


def pack_float(weight: torch.Tensor, bits: int) -> PackedWeight:
    """Quantize a float weight in blocks of 32 along its input dimension: asymmetric 4-bit as GGUF Q4_1
    does (the block's min and range over 15 steps, both kept as float16), or symmetric 8-bit per output
    row (scale max|w| / 127)."""
    weight = weight.detach().float()
    out_features, in_features = weight.shape
    blocks = -(-in_features // GROUP_SIZE)
    grouped = torch.nn.functional.pad(weight, (0, blocks * GROUP_SIZE - in_features)).view(out_features, blocks, -1)
    if bits == 4:
        low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)
        step = (high - low) / 15
        inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
        codes = torch.round((grouped - low[..., None]) * inverse[..., None]).clamp_(0, 15).to(torch.uint8)
        return pack(codes.view(out_features, -1)[:, :in_features], step.half(), low.half())
    scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    codes = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return pack(codes, scale[:, None].expand(-1, blocks), torch.zeros(out_features, blocks))


def lowbit_linear(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """x [M, in_features] contiguous float32 on the CPU -> [M, out_features] float32, through the op
    (`lowbit_available()` must be True)."""
    op = torch.ops.kilotok.q4_linear if weight.bits == 4 else torch.ops.kilotok.q8_linear
    return op(x, weight.codes, weight.scales, weight.extra, weight.out_features)


def reference_lowbit_linear(x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """What the ops compute, in PyTorch: activations quantized to int8 per block of 32 (scale amax / 127,
    rounded to nearest even), products with the exact weights, the Q4 offsets times the exact block sums."""
    rows = x.shape[0]
    blocks = weight.scales.shape[1]
    grouped = torch.nn.functional.pad(x.float(), (0, blocks * GROUP_SIZE - x.shape[1])).view(rows, blocks, -1)
    amax = grouped.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    quantized = torch.round(grouped * inverse) * (amax / 127)
    w, offsets = unpack(weight)
    out = torch.einsum("rbk,nbk->rn", quantized, w)
    if offsets is not None:
        out += torch.einsum("rb,nb->rn", grouped.sum(dim=-1), offsets)
    return out


def unpack(weight: PackedWeight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The packed weight back as scales * codes [out, blocks, 32] in float32, and the Q4 offsets
    [out, blocks] (None for 8 bits)."""
    tiles, blocks = weight.scales.shape[:2]
    if weight.bits == 4:
        nibbles = weight.codes
        steps = torch.stack([nibbles & 0x0F, nibbles >> 4], dim=3).view(tiles, blocks, 8, 64)
    else:
        steps = weight.codes
    codes = steps.view(tiles, blocks, 8, TILE, 4).permute(0, 3, 1, 2, 4).reshape(tiles * TILE, blocks, GROUP_SIZE)
    scales = weight.scales.float().transpose(1, 2).reshape(tiles * TILE, blocks)
    w = (codes.float() * scales[..., None])[: weight.out_features]
    if weight.bits == 8:
        return w, None
    return w, weight.extra.float().transpose(1, 2).reshape(tiles * TILE, blocks)[: weight.out_features]


class LowBitLinear(nn.Module):
    """y = x @ w.T + bias over a `PackedWeight`, in x's dtype (computed in float32): through the op where
    it runs (decided once, here, so compiled graphs see a constant), else through the reference."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.use_op = lowbit_available()
        self.bits = weight.bits
        self.out_features, self.in_features = weight.out_features, weight.in_features
        self.register_buffer("codes", weight.codes)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("extra", weight.extra)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.bits, self.codes, self.scales, self.extra, self.out_features, self.in_features)

    @property
    def weight_bytes(self) -> int:
        buffers = [self.codes, self.scales, self.extra] + ([] if self.bias is None else [self.bias])
        return sum(b.numel() * b.element_size() for b in buffers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, self.in_features).float().contiguous()
        out = lowbit_linear(flat, self.packed) if self.use_op else reference_lowbit_linear(flat, self.packed)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*leading, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"
