"""The 4-bit products of one SmolLM2-135M decode step, through kilotok's low-bit op alone, by rows.

Each of the 30 layers gets its own random Q4 weights in the model's four projection shapes (fused qkv,
o, fused gate/up, down), so the step streams as many weight bytes as the real one; prints the median
of 11 steps in ms for each row count. Run it from two trees alternately to compare kernels:

    PYTHONPATH=/path/to/tree python scripts/lowbit_step_products.py 1,4,8,16,32
"""

from __future__ import annotations

import sys
import time

import torch

from kilotok.quant import lowbit

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
LAYERS = 30


def step(layers: list[list[lowbit.PackedWeight]], inputs: dict[int, torch.Tensor]) -> None:
    for layer in layers:
        for weight in layer:
            lowbit.lowbit_linear(inputs[weight.in_features], weight)


def main() -> None:
    if not lowbit.lowbit_available():
        sys.exit("the low-bit op is not available on this machine")
    rows = [int(m) for m in (sys.argv[1] if len(sys.argv) > 1 else "1,4,8,16,32").split(",")]
    torch.manual_seed(0)
    layers = [[lowbit.pack_float(torch.randn(n, k), 4) for n, k in SHAPES] for _ in range(LAYERS)]
    medians = []
    for m in rows:
        inputs = {k: torch.randn(m, k) for k in {k for _, k in SHAPES}}
        for _ in range(2):
            step(layers, inputs)
        times = []
        for _ in range(11):
            start = time.perf_counter()
            step(layers, inputs)
            times.append(time.perf_counter() - start)
        medians.append(sorted(times)[5] * 1e3)
    print("rows  " + " ".join(f"{m:>7d}" for m in rows))
    print("ms    " + " ".join(f"{t:7.2f}" for t in medians))


if __name__ == "__main__":
    main()
