"""Check the CUDA FP8 product paths (torch._scaled_mm for per-tensor and per-channel weights, dequantise
and multiply for 128x128 blocks) against the CPU reference path on the same quantised weights.

Usage (on a GPU machine, through the launcher; no model or wheels needed):
    run(command="bash scripts/gpu/launch.sh --budget 120 -- python3 scripts/gpu/check_fp8.py", timeout_s=150)
"""

from __future__ import annotations

import torch

from kilotok.kernels.fp8_gemm import fp8_linear
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.quant.fp8 import quantize_fp8


def on(device: str, weight: Fp8Weight) -> Fp8Weight:
    return Fp8Weight(weight.data.to(device), weight.scale.to(device), weight.block)


def main() -> None:
    torch.manual_seed(0)
    for scheme in ("tensor", "channel", "block"):
        weight = quantize_fp8(torch.randn(1536, 576) * 0.05, scheme)
        for rows in (1, 8, 64):
            x = torch.randn(rows, 576, dtype=torch.bfloat16)
            cpu = fp8_linear(x, weight).float()
            gpu = fp8_linear(x.cuda(), on("cuda", weight)).float().cpu()
            exact = x.float() @ weight.dequantize().T
            print(f"{scheme:8s} rows {rows:3d}: |gpu - cpu| / |cpu| = {(gpu - cpu).norm() / cpu.norm():.2e}, "
                  f"|gpu - unquantised x| / |.| = {(gpu - exact).norm() / exact.norm():.2e}", flush=True)


if __name__ == "__main__":
    main()
