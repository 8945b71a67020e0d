"""The model families kilotok runs: which family a config.json belongs to, its translation into a
ModelConfig, and the tensors it implies (checked by the loaders before they read any tensor data).

Adding a family: write `models/<family>.py` declaring a `ModelFamily` (its config.json fields, its
feed-forward names, its expert layout), and add it to FAMILIES below.
"""

from __future__ import annotations

from typing import Any

from kilotok.errors import ModelFormatError
from kilotok.loader.checkpoint import Checkpoint, ExpectedTensors
from kilotok.loader.registry import read_checkpoint
from kilotok.models.config import ModelConfig
from kilotok.models.family import ModelFamily, check_feed_forward_names, expected_shapes
from kilotok.models.llama import LLAMA, llama_fields
from kilotok.models.llama4 import LLAMA4
from kilotok.models.mixtral import MIXTRAL
from kilotok.models.qwen3_moe import QWEN3_MOE
from kilotok.models.random_weights import is_random_model, random_checkpoint, random_model_config

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (LLAMA, LLAMA4, MIXTRAL, QWEN3_MOE)}
LM_HEAD = "lm_head.weight"


def family_of(config: dict[str, Any]) -> ModelFamily:
    """The family a config.json belongs to, after checking that its model type and every declared
    architecture are ones kilotok runs."""
    model_type_of = {arch: model_type for family in FAMILIES.values() for arch, model_type in
                     family.hf_architectures.items()}
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type is None and architectures:
        model_type = model_type_of.get(architectures[0])
    mismatched = [name for name in architectures if model_type_of.get(name) != model_type]
    family = next((f for f in FAMILIES.values() if model_type in f.hf_architectures.values()), None)
    if mismatched or family is None:
        raise ModelFormatError(
            f"unsupported architecture {', '.join(architectures) or '(none given)'} "
            f"(model_type {model_type!r}); kilotok reads Hugging Face folders of {', '.join(model_type_of)}"
        )
    return family


def model_config(config: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a config.json: every family's Llama fields, then the family's own."""
    family = family_of(config)
    text = family.text_config(config)
    default_context = family.default_context.get(text.get("model_type"), 4096)
    fields = llama_fields(text, default_context) | family.config_fields(text)
    return ModelConfig(architecture=family.name, **fields)


def expected_tensors(config: dict[str, Any], names: list[str]) -> ExpectedTensors:
    """What a checkpoint with this config.json must hold (the loaders' `ExpectTensors`)."""
    model = model_config(config)
    family = FAMILIES[model.architecture]
    shapes = expected_shapes(model, family)
    check_feed_forward_names(model, family, names, shapes)
    summary = (f"{model.num_layers} layers, attention_bias={model.attention_bias}, mlp_bias={model.mlp_bias}, "
               f"tie_word_embeddings={model.tie_word_embeddings}")
    return ExpectedTensors(shapes, frozenset({LM_HEAD}) if model.tie_word_embeddings else frozenset(), summary)


def load_checkpoint(name_or_path: str, progress: bool = True) -> Checkpoint:
    """Read a model's files, checked against what its config implies before any tensor data is read; a
    `random:` name (models/random_weights.py) is drawn instead."""
    if is_random_model(name_or_path):
        config = random_model_config(name_or_path)
        model = model_config(config)
        return random_checkpoint(name_or_path, config, expected_shapes(model, FAMILIES[model.architecture]))
    return read_checkpoint(name_or_path, expected_tensors, progress)
