"""Write a Hugging Face model folder: config.json, model.safetensors and the tokenizer files.

A folder source keeps its own config.json (plus what the writer adds) and tokenizer files, copied as they
are. A GGUF source gets the Llama config.json its metadata makes (loader/gguf_config.py) and tokenizer
files made from its tokenizer (tokenizer.json, tokenizer_config.json with the chat template,
generation_config.json with every stop id), which kilotok and transformers both read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from kilotok.errors import InvalidRequestError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.tokenizer.tokenizer import Tokenizer

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def source_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """The config.json to start from: the folder's own, or the one a GGUF's metadata makes."""
    return json.loads(json.dumps(checkpoint.config))


def write_hf_folder(out: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                    checkpoint: Checkpoint) -> Path:
    """Write config, weights and tokenizer into `out` (created; must not hold a model already)."""
    out = Path(out)
    if (out / "config.json").exists() or (out / WEIGHTS_FILE).exists():
        raise InvalidRequestError(f"{out} already holds a model; choose an empty or new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(out / WEIGHTS_FILE),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if checkpoint.path.is_dir():
        for name in TOKENIZER_FILES:
            if (checkpoint.path / name).is_file():
                shutil.copyfile(checkpoint.path / name, out / name)
    else:
        write_tokenizer(checkpoint.tokenizer, out)
    return out


def write_tokenizer(tokenizer: Tokenizer, out: Path) -> None:
    """tokenizer.json, tokenizer_config.json (special tokens, chat template) and generation_config.json."""
    tokenizer.backend.save(str(out / "tokenizer.json"))
    stop_ids = list(tokenizer.eos_token_ids)

    def text(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.id_to_token(token_id)

    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(tokenizer.bos_token_id),
        "eos_token": text(stop_ids[0] if stop_ids else None),
        "pad_token": text(tokenizer.pad_token_id),
        "add_bos_token": tokenizer.add_bos_token,
        "chat_template": tokenizer.chat_template,
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    generation = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": stop_ids}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
