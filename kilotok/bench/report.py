"""What every benchmark shares: the machine a figure was measured on, the statistics, the printed tables,
progress lines and JSON files. `kilotok bench serve`'s own results live in bench/serve_results.py.

Everything here works on finished measurements, so it is tested with hand-made numbers, no model.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# The extensions that decide which CPU kernels are fast; present ones are listed in the report.
_RELEVANT_CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return cpuinfo.read().splitlines()
    except OSError:
        return []


def _first_cpuinfo_value(lines: list[str], key: str) -> str | None:
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def machine_info() -> dict[str, object]:
    """CPU model, vector extensions, threads and library versions, as plain JSON-ready values.

    A speed means nothing without the machine: it moves with the processor (the same session has seen
    Sapphire Rapids and Zen 4 machines), so every report names the CPU, its vector extensions, the thread
    count it ran with and how busy it was.
    """
    import torch

    lines = _cpuinfo_lines()
    flags = set((_first_cpuinfo_value(lines, "flags") or "").split())
    return {
        "cpu_model": _first_cpuinfo_value(lines, "model name") or platform.processor() or "unknown",
        "cpu_flags": [flag for flag in _RELEVANT_CPU_FLAGS if flag in flags],
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        # A busy machine (other jobs on these 2 shared cores) slows every engine unevenly; this says so.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def percentile(values: list[float], percent: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), so p10 of few samples is stable."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * percent / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median milliseconds per call of each function, timed in alternation so that load on a shared
    machine falls on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for fn, samples in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(samples) for samples in times]


def table_lines(rows: list[tuple[str, ...]], left_aligned: int = 0) -> list[str]:
    """Columns two spaces apart, the first `left_aligned` (names) left-aligned, the rest (numbers) right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) if column < left_aligned else cell.rjust(width)
                  for column, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]
