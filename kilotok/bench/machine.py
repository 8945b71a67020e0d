"""The facts about the machine that a benchmark number is meaningless without.

Speeds here move with the processor (the same session has seen Sapphire Rapids and Zen 4 machines), so
every report names the CPU, its vector extensions, the thread count it ran with and how busy it was.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime

# The extensions that decide which CPU kernels are fast; present ones are listed in the report.
_RELEVANT_CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


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
    """CPU model, vector extensions, threads and library versions, as plain JSON-ready values."""
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
