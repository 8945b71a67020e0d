"""How much to speculate at each batch size.

A draft tree pays for itself when the target forward is memory-bound: at batch 1 verifying a few extra
rows costs little more than decoding one. As the batch grows the forward turns compute-bound, extra rows
cost their full price, and speculation stops paying. The policy is a table from batch size to tree
shape (or none), measured on the machine by `kilotok bench spec-policy` and stored as JSON.

Tables are per device: kilotok ships those measured on the devices it was tuned on (assets/spec-policies/
MODEL/METHOD-FAMILY.json, written by that command, never by hand), where FAMILY is a processor family for a
model on the CPU (avx512-vnni) and `cuda-` and the GPU's name for one on CUDA (cuda-nvidia-h200), and picks
the one for the device the model runs on: never a CPU table for a GPU, whose costs by row count differ
entirely. Without a table (speculative/config.py): on the CPU the configured tree runs up to batch 4, on
CUDA, where verifying extra rows costs little up to far larger batches, at every batch size.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from kilotok.errors import InvalidRequestError


@dataclass(frozen=True)
class TreeShape:
    depth: int
    """Longest draft path."""
    tree_size: int
    """Most draft nodes per sequence."""


@dataclass(frozen=True)
class SpecPolicy:
    limits: tuple[tuple[int, TreeShape | None], ...]
    """(largest batch size, shape) rows in increasing batch size; past the last row: no speculation."""

    def __post_init__(self) -> None:
        batch_sizes = [batch for batch, _ in self.limits]
        if batch_sizes != sorted(set(batch_sizes)) or any(b < 1 for b in batch_sizes):
            raise InvalidRequestError(f"spec policy batch sizes {batch_sizes} must be positive and increasing")

    @classmethod
    def fixed(cls, shape: TreeShape) -> SpecPolicy:
        """The same tree at every batch size."""
        return cls(((1 << 30, shape),))

    def shape_for(self, batch_size: int) -> TreeShape | None:
        return next((shape for batch, shape in self.limits if batch_size <= batch), None)

    def drafts_up_to(self, max_batch_size: int) -> bool:
        """Whether any batch size up to `max_batch_size` gets a tree."""
        smallest = 1
        for batch, shape in self.limits:
            if smallest > max_batch_size:
                return False
            if shape is not None:
                return True
            smallest = batch + 1
        return False

    def max_verify_rows(self, max_batch_size: int) -> int:
        """The most rows a verification forward can have with up to `max_batch_size` sequences: each
        sequence's last token plus its draft tree."""
        return max(batch * (1 + (shape.tree_size if shape else 0))
                   for batch, shape in ((b, self.shape_for(b)) for b in range(1, max_batch_size + 1)))

    def capped(self, largest: TreeShape) -> SpecPolicy:
        """The policy with no tree deeper or larger than `largest` (the KV slots the scheduler reserves)."""
        return SpecPolicy(tuple(
            (batch, None if shape is None else TreeShape(min(shape.depth, largest.depth),
                                                         min(shape.tree_size, largest.tree_size)))
            for batch, shape in self.limits
        ))

    def to_json(self) -> dict:
        return {"limits": [{"max_batch_size": batch, "depth": shape.depth if shape else 0,
                            "tree_size": shape.tree_size if shape else 0} for batch, shape in self.limits]}

    @classmethod
    def from_json(cls, record: dict) -> SpecPolicy:
        try:
            rows = [(int(row["max_batch_size"]), int(row["depth"]), int(row["tree_size"]))
                    for row in record["limits"]]
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidRequestError(
                f"a spec policy needs 'limits': [{{max_batch_size, depth, tree_size}}, ...] ({error})"
            ) from error
        return cls(tuple((batch, TreeShape(depth, size) if depth > 0 and size > 0 else None)
                         for batch, depth, size in rows))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SpecPolicy:
        path = Path(path)
        if not path.is_file():
            raise InvalidRequestError(
                f"spec policy file {path} does not exist: write one with `kilotok bench spec-policy --out {path}`"
            )
        try:
            return cls.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"spec policy file {path} is not valid JSON: {error}") from error


SHIPPED_POLICIES = Path(__file__).resolve().parents[1] / "assets" / "spec-policies"


def processor_family(cpu_flags: set[str] | None = None) -> str | None:
    """The CPU family a shipped policy is measured for: extra rows cost differently with AMX, with
    AVX-512 VNNI alone, and without either (no table). `cpu_flags` defaults to this machine's."""
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if "avx512_vnni" not in flags:
        return None
    return "avx512-vnni-amx" if "amx_int8" in flags or "amx_tile" in flags else "avx512-vnni"


def device_family(device: torch.device | str, cpu_flags: set[str] | None = None) -> str | None:
    """The family of shipped tables for a model on `device`: on the CPU its processor family (None where no
    table can apply), on CUDA `cuda-` and the GPU's name in lower case, words joined by '-'."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", _gpu_name(device).lower()).strip("-")
    return processor_family(cpu_flags) if device.type == "cpu" else None


def shipped_policy_path(model_name: str, method: str, family: str | None) -> Path | None:
    """The shipped table for a registered model name, a method and a device family, if there is one."""
    if family is None or not re.fullmatch(r"[\w.-]+", model_name):
        return None
    path = SHIPPED_POLICIES / model_name / f"{method}-{family}.json"
    return path if path.is_file() else None


def _cpu_flags() -> set[str]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)
