"""What every loader returns: a validated config, weights under Hugging Face names, and a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kilotok.config import ModelConfig
from kilotok.loader.tensor import Weight

if TYPE_CHECKING:
    from kilotok.loader.tokenizer import Tokenizer


@dataclass
class Checkpoint:
    """A model as loaded from disk, before it is placed into kilotok's modules.

    `weights` uses Hugging Face Llama names (`model.layers.0.self_attn.q_proj.weight`, ...), so GGUF and
    safetensors checkpoints feed the same model code. Values are float tensors or `QuantizedTensor`s.
    """

    config: ModelConfig
    weights: dict[str, Weight]
    tokenizer: Tokenizer
    path: Path
    name: str
