"""The cost of --check-tensors on the default model: the check alone, and load_model with and without it
(7 runs each, alternated; medians).

usage: python scripts/check_tensors_cost.py
"""

from __future__ import annotations

import statistics
import time

from kilotok.loader.tensor_check import check_tensors
from kilotok.models.builder import load_model
from kilotok.models.registry import load_checkpoint


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    load_model("smollm2-135m", progress=False)  # imports and the page cache, outside the timing
    checkpoint = load_checkpoint("smollm2-135m", progress=False)
    alone = [timed(lambda: check_tensors(checkpoint)) for _ in range(7)]
    loads: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(7):
        for flag in loads:
            loads[flag].append(timed(lambda flag=flag: load_model("smollm2-135m", progress=False,
                                                                   check_tensors=flag)))
    print(f"check alone: median {statistics.median(alone) * 1000:.1f} ms")
    for flag, times in loads.items():
        print(f"load_model(check_tensors={flag}): median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
