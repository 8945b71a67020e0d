"""Where a model's files are on disk, in the form the reference engines load them from.

transformers wants a folder plus the GGUF's file name; llama.cpp wants the GGUF path and cannot read a
Hugging Face folder at all. Names resolve exactly as kilotok resolves them, so every engine loads the
same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kilotok.loader.registry import resolve_model


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    gguf_file: str | None

    @property
    def gguf_path(self) -> Path | None:
        return None if self.gguf_file is None else self.folder / self.gguf_file


def resolve_model_files(model: str) -> ModelFiles:
    """A GGUF path, a Hugging Face folder or a model alias, as a folder and optional GGUF file name."""
    path = resolve_model(model)
    return ModelFiles(path, None) if path.is_dir() else ModelFiles(path.parent, path.name)
