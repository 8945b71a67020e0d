"""Bit flips written into a GGUF file's tensor data, as a damaged download or disk would leave them, for
the `--check-tensors` tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from gguf import GGUFReader

NAN_HALF = (0x7E00).to_bytes(2, "little")
INF_HALF = (0x7C00).to_bytes(2, "little")
DAMAGED_DEFAULT_TENSOR = ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight")
"""A Q4_1 matrix of the default model (GGUF and Hugging Face names) whose first row's block 10 gets a NaN
scale in `damaged_default_model`."""


def damage_tensor(path: Path, gguf_name: str, offset: int, data: bytes) -> Path:
    """Overwrite bytes of one tensor's data, `offset` bytes into it."""
    tensor = next(t for t in GGUFReader(path).tensors if t.name == gguf_name)
    with path.open("r+b") as file:
        file.seek(tensor.data_offset + offset)
        file.write(data)
    return path


def damaged_default_model(default_gguf_path: Path, folder: Path) -> Path:
    """A copy of the default model with one NaN block scale (Q4_1 blocks are 20 bytes, the scale first)."""
    copy = Path(shutil.copy(default_gguf_path, folder / "damaged.gguf"))
    return damage_tensor(copy, DAMAGED_DEFAULT_TENSOR[0], 10 * 20, NAN_HALF)
