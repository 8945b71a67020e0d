"""Load a Hugging Face model folder: config.json, safetensors weights (one file or sharded), tokenizer."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.loader.checkpoint import Checkpoint, ExpectedTensors, ExpectTensors
from kilotok.loader.hf_quant import attach_fp8_scales, read_quantization_config, scale_tensor_names

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TEXT_MODEL_PREFIX = "language_model."

RESTORE = "download or copy the model folder again"
# safetensors dtype codes of floating-point tensors; integer Llama weights mean a format we can't run.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def load_hf_folder(folder: Path, expect: ExpectTensors | None = None, progress: bool = True) -> Checkpoint:
    """Load config, weights (under their stored Hugging Face names and dtypes) and tokenizer of a folder."""
    folder = Path(folder)
    config = read_hf_config(folder)
    weights = attach_fp8_scales(load_hf_weights(folder, config, expect, progress), read_quantization_config(folder))
    from kilotok.tokenizer.tokenizer import tokenizer_from_hf_folder

    tokenizer = tokenizer_from_hf_folder(folder)
    return Checkpoint(config=config, weights=weights, tokenizer=tokenizer, path=folder, name=folder.name)


def read_hf_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelFormatError(
            f"{folder} has no {CONFIG_FILE}; a Hugging Face model folder needs {CONFIG_FILE}, "
            f"{SINGLE_WEIGHTS_FILE} (or shards with {INDEX_FILE}) and tokenizer files"
        )
    raw = _read_json(config_path)
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{config_path} must hold a JSON object; {RESTORE}")
    return raw


def load_hf_weights(folder: Path, config: dict[str, Any], expect: ExpectTensors | None = None,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Read every tensor of the folder's safetensors files, after checking names and shapes against what
    `expect` says the config implies."""
    shards = _locate_shards(folder)
    with ExitStack() as stack:
        handles = {shard: stack.enter_context(_open_shard(shard)) for shard in shards}
        owner = _tensor_owners(shards, handles)
        stored = text_model_names(list(owner))
        owner = {name: owner[stored_name] for name, stored_name in stored.items()}
        if expect is not None:
            scales = scale_tensor_names(owner)
            _validate_tensors(expect(config, [name for name in owner if name not in scales]), owner, handles, stored)
        weights = {}
        for name in tqdm(owner, desc=f"loading {folder.name}", unit="tensor", file=sys.stderr,
                         disable=not progress):
            weights[name] = handles[owner[name]].get_tensor(stored[name])
    return weights


def _locate_shards(folder: Path) -> dict[Path, list[str] | None]:
    """Map each safetensors file to the tensor names the index assigns it (None: whatever the file holds)."""
    single = folder / SINGLE_WEIGHTS_FILE
    if single.is_file():
        return {single: None}
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        legacy = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f" (found {', '.join(legacy)})" if legacy else ""
        raise ModelFormatError(
            f"{folder} has neither {SINGLE_WEIGHTS_FILE} nor {INDEX_FILE}{found}; kilotok reads only "
            "safetensors weights, not PyTorch .bin/.pt checkpoints: convert them to safetensors "
            "(e.g. load with transformers and save_pretrained(..., safe_serialization=True))"
        )
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFormatError(f"{index_path} has no 'weight_map' naming the shard of each tensor; {RESTORE}")
    shards: dict[Path, list[str] | None] = {}
    for name, shard_name in weight_map.items():
        shard = folder / shard_name
        if not shard.is_file():
            raise ModelFormatError(
                f"{INDEX_FILE} puts tensor {name!r} in shard {shard_name!r}, which is missing from {folder}: "
                f"the download is incomplete; {RESTORE}"
            )
        shards.setdefault(shard, []).append(name)
    return shards


def _open_shard(shard: Path) -> Any:
    try:
        return safe_open(shard, framework="pt")
    except (SafetensorError, OSError) as error:
        raise ModelFormatError(
            f"cannot read safetensors file {shard}: {error}; it may be truncated or corrupt: {RESTORE}"
        ) from error


def _tensor_owners(shards: dict[Path, list[str] | None], handles: dict[Path, Any]) -> dict[str, Path]:
    """Which open shard holds each tensor, checking that every indexed tensor is really in its shard."""
    owner: dict[str, Path] = {}
    for shard, indexed_names in shards.items():
        stored = set(handles[shard].keys())
        for name in indexed_names if indexed_names is not None else sorted(stored):
            if name not in stored:
                raise ModelFormatError(f"{INDEX_FILE} puts tensor {name!r} in {shard}, which lacks it: the index "
                                       f"and the shards come from different versions; {RESTORE}")
            owner[name] = shard
    return owner


def _validate_tensors(expected: ExpectedTensors, owner: dict[str, Path], handles: dict[Path, Any],
                      stored: dict[str, str]) -> None:
    """Fail on the first missing, misshapen or non-float tensor, before any weight is read."""
    for name, shape_wanted in expected.shapes.items():
        if name not in owner:
            if name in expected.optional:
                continue
            raise ModelFormatError(
                f"tensor {name!r} is missing from the checkpoint, but config.json implies it ({expected.summary})"
            )
        tensor = handles[owner[name]].get_slice(stored[name])
        shape = tuple(tensor.get_shape())
        if shape != shape_wanted:
            raise ModelFormatError(
                f"tensor {name!r} in {owner[name].name} has shape {shape}, but config.json implies {shape_wanted}"
            )
        if tensor.get_dtype() not in FLOAT_DTYPES:
            raise ModelFormatError(
                f"tensor {name!r} has dtype {tensor.get_dtype()}; kilotok reads only floating-point "
                "safetensors weights"
            )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{path} is not readable JSON ({error}); {RESTORE}") from error


def text_model_names(stored: list[str]) -> dict[str, str]:
    """Map each tensor kilotok reads to its stored name: the `language_model.` part of a multimodal
    checkpoint (Llama 4 keeps its text model there, beside `vision_model.` and `multi_modal_projector.`)
    when there is one, else every tensor under its own name."""
    if not any(name.startswith(TEXT_MODEL_PREFIX) for name in stored):
        return {name: name for name in stored}
    return {name[len(TEXT_MODEL_PREFIX):]: name for name in stored if name.startswith(TEXT_MODEL_PREFIX)}
