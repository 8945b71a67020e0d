"""What every loader returns: the model's config.json (as Hugging Face writes it), weights under Hugging
Face names, and a tokenizer. Which tensors a config implies is the model family's knowledge, not the
loader's: a loader asks its caller (`ExpectTensors`) before it reads any tensor data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kilotok.loader.tensor import Weight

if TYPE_CHECKING:
    from kilotok.tokenizer.tokenizer import Tokenizer


@dataclass
class Checkpoint:
    """A model as loaded from disk, before it is placed into kilotok's modules.

    `config` is the config.json dict (a GGUF file's metadata written as one). `weights` uses Hugging Face
    Llama names (`model.layers.0.self_attn.q_proj.weight`, ...), so GGUF and safetensors checkpoints feed
    the same model code. Values are float tensors, `QuantizedTensor`s or `Fp8Weight`s.
    """

    config: dict[str, Any]
    weights: dict[str, Weight]
    tokenizer: Tokenizer
    path: Path | None
    name: str


@dataclass(frozen=True)
class ExpectedTensors:
    """The tensors a config implies, by Hugging Face name, with their shapes."""

    shapes: dict[str, tuple[int, ...]]
    optional: frozenset[str] = field(default_factory=frozenset)
    """Tensors that may be missing (a tied LM head); when present they must fit."""
    summary: str = ""
    """The config's facts that decide which tensors exist, for error messages."""


ExpectTensors = Callable[[dict[str, Any], list[str]], ExpectedTensors]
"""(config.json dict, names of the weights found, FP8 scales left out) -> what must be there; raises
ModelFormatError for a config it cannot run or tensors it cannot account for."""
