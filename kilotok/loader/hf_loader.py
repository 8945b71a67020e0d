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

from kilotok.config import MOE_ARCHITECTURES, ModelConfig
from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.hf_config import config_from_hf
from kilotok.loader.hf_moe_names import check_ffn_tensors, text_model_names, variant_layer_shapes
from kilotok.loader.hf_quant import attach_fp8_scales, read_quantization_config

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"

# safetensors dtype codes of floating-point tensors; integer Llama weights mean a format we can't run.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def load_hf_folder(folder: Path, progress: bool = True) -> Checkpoint:
    """Load config, weights (under their stored Hugging Face names and dtypes) and tokenizer of a folder."""
    folder = Path(folder)
    config = read_hf_config(folder)
    weights = attach_fp8_scales(load_hf_weights(folder, config, progress), read_quantization_config(folder))
    from kilotok.loader.tokenizer import tokenizer_from_hf_folder

    tokenizer = tokenizer_from_hf_folder(folder)
    return Checkpoint(config=config, weights=weights, tokenizer=tokenizer, path=folder, name=folder.name)


def read_hf_config(folder: Path) -> ModelConfig:
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
        raise ModelFormatError(f"{config_path} must hold a JSON object")
    return config_from_hf(raw)


def expected_llama_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama model with this config has, by Hugging Face name, with its shape.

    `lm_head.weight` is included even when tied: a tied checkpoint may omit it, but if present it must fit.
    """
    hidden, vocab, ffn = config.hidden_size, config.vocab_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        LM_HEAD: (vocab, hidden),
    }
    # (module, out_features, in_features, has_bias) of every linear layer in a decoder layer.
    linears = (
        ("self_attn.q_proj", config.q_size, hidden, config.attention_bias),
        ("self_attn.k_proj", config.kv_size, hidden, config.attention_bias),
        ("self_attn.v_proj", config.kv_size, hidden, config.attention_bias),
        ("self_attn.o_proj", hidden, config.q_size, config.attention_bias),
        ("mlp.gate_proj", ffn, hidden, config.mlp_bias),
        ("mlp.up_proj", ffn, hidden, config.mlp_bias),
        ("mlp.down_proj", hidden, ffn, config.mlp_bias),
    )
    for layer in range(config.num_layers):
        prefix = f"model.layers.{layer}."
        for module, out_features, in_features, has_bias in linears:
            shapes[f"{prefix}{module}.weight"] = (out_features, in_features)
            if has_bias:
                shapes[f"{prefix}{module}.bias"] = (out_features,)
        shapes[f"{prefix}input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}post_attention_layernorm.weight"] = (hidden,)
    return shapes


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """`expected_llama_shapes`, with the feed-forward (and q/k norm) tensors of a mixture-of-experts family."""
    shapes = expected_llama_shapes(config)
    if config.architecture in MOE_ARCHITECTURES:
        shapes = {name: shape for name, shape in shapes.items() if ".mlp." not in name}
        shapes.update(variant_layer_shapes(config))
    return shapes


def load_hf_weights(folder: Path, config: ModelConfig, progress: bool = True) -> dict[str, torch.Tensor]:
    """Read every tensor of the folder's safetensors files after checking names and shapes against config."""
    shards = _locate_shards(folder)
    with ExitStack() as stack:
        handles = {shard: stack.enter_context(_open_shard(shard)) for shard in shards}
        owner = _tensor_owners(shards, handles)
        stored = text_model_names(owner)
        owner = {name: owner[stored_name] for name, stored_name in stored.items()}
        _validate_tensors(config, owner, handles, stored)
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
        raise ModelFormatError(f"{index_path} has no 'weight_map' naming the shard of each tensor")
    shards: dict[Path, list[str] | None] = {}
    for name, shard_name in weight_map.items():
        shard = folder / shard_name
        if not shard.is_file():
            raise ModelFormatError(
                f"{INDEX_FILE} puts tensor {name!r} in shard {shard_name!r}, which is missing from {folder}; "
                "the download is incomplete"
            )
        shards.setdefault(shard, []).append(name)
    return shards


def _open_shard(shard: Path) -> Any:
    try:
        return safe_open(shard, framework="pt")
    except (SafetensorError, OSError) as error:
        raise ModelFormatError(
            f"cannot read safetensors file {shard}: {error}; it may be truncated or corrupt"
        ) from error


def _tensor_owners(shards: dict[Path, list[str] | None], handles: dict[Path, Any]) -> dict[str, Path]:
    """Which open shard holds each tensor, checking that every indexed tensor is really in its shard."""
    owner: dict[str, Path] = {}
    for shard, indexed_names in shards.items():
        stored = set(handles[shard].keys())
        for name in indexed_names if indexed_names is not None else sorted(stored):
            if name not in stored:
                raise ModelFormatError(f"{INDEX_FILE} puts tensor {name!r} in {shard.name}, which lacks it")
            owner[name] = shard
    return owner


def _validate_tensors(config: ModelConfig, owner: dict[str, Path], handles: dict[Path, Any],
                      stored: dict[str, str]) -> None:
    """Fail on the first missing, misshapen or non-float tensor, before any weight is read."""
    shapes = expected_shapes(config)
    if config.architecture in MOE_ARCHITECTURES:
        check_ffn_tensors(config, owner, shapes)
    for name, expected in shapes.items():
        if name not in owner:
            if name == LM_HEAD and config.tie_word_embeddings:
                continue
            raise ModelFormatError(
                f"tensor {name!r} is missing from the checkpoint, but config.json implies it "
                f"({config.num_layers} layers, attention_bias={config.attention_bias}, "
                f"mlp_bias={config.mlp_bias}, tie_word_embeddings={config.tie_word_embeddings})"
            )
        tensor = handles[owner[name]].get_slice(stored[name])
        shape = tuple(tensor.get_shape())
        if shape != expected:
            raise ModelFormatError(
                f"tensor {name!r} in {owner[name].name} has shape {shape}, but config.json implies {expected}"
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
        raise ModelFormatError(f"cannot parse {path}: {error}") from error
