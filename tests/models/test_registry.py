"""Which family a config.json belongs to, and loading a model checked against what its family expects."""

from __future__ import annotations

import pytest
import transformers

from kilotok.errors import ModelFormatError
from kilotok.loader import hf_loader
from kilotok.loader.checkpoint import Checkpoint
from kilotok.models.registry import expected_tensors, family_of, load_checkpoint, model_config

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)
CONFIGS = {  # config class -> (the architecture transformers saves, kilotok's family)
    "LlamaConfig": ("LlamaForCausalLM", "llama"),
    "MistralConfig": ("MistralForCausalLM", "llama"),
    "Llama4TextConfig": ("Llama4ForCausalLM", "llama4"),
    "MixtralConfig": ("MixtralForCausalLM", "mixtral"),
    "Qwen3MoeConfig": ("Qwen3MoeForCausalLM", "qwen3_moe"),
}


def config_json(config_class: str, **changes) -> dict:
    architecture, _ = CONFIGS[config_class]
    # Mistral's default sliding window is shorter than its context, which kilotok rejects.
    window = {"sliding_window": None} if config_class == "MistralConfig" else {}
    raw = getattr(transformers, config_class)(**SMALL, **window).to_dict() | {"architectures": [architecture]}
    return raw | changes


@pytest.mark.parametrize("config_class", CONFIGS)
def test_family_follows_model_type_and_architecture(config_class):
    family = CONFIGS[config_class][1]
    assert family_of(config_json(config_class)).name == family
    assert model_config(config_json(config_class)).architecture == family
    # The model type alone, or the architecture alone, is enough.
    assert family_of(config_json(config_class, architectures=None)).name == family
    assert family_of(config_json(config_class, model_type=None)).name == family


@pytest.mark.parametrize("changes,message", [
    (dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2"), r"Qwen2ForCausalLM.*LlamaForCausalLM"),
    (dict(architectures=["LlamaForCausalLM"], model_type="mixtral"), r"LlamaForCausalLM \(model_type 'mixtral'\)"),
    (dict(architectures=None, model_type=None), r"\(none given\)"),
])
def test_unsupported_architecture_is_named(changes, message):
    with pytest.raises(ModelFormatError, match=f"unsupported architecture {message}"):
        model_config(config_json("LlamaConfig", **changes))


def test_tied_head_is_optional():
    names = ["model.embed_tokens.weight"]
    assert expected_tensors(config_json("LlamaConfig", tie_word_embeddings=True), names).optional == {"lm_head.weight"}
    untied = expected_tensors(config_json("LlamaConfig", tie_word_embeddings=False), names)
    assert untied.optional == frozenset() and untied.shapes["lm_head.weight"] == (64, 32)
    assert "2 layers" in untied.summary and "tie_word_embeddings=False" in untied.summary


def test_load_checkpoint_checks_against_the_family(monkeypatch, tmp_path):
    calls = []

    def load_hf_folder(path, expect=None, progress=True) -> Checkpoint:
        calls.append((path, expect, progress))
        return Checkpoint(config={}, weights={}, tokenizer=None, path=path, name="set by the loader")

    monkeypatch.setattr(hf_loader, "load_hf_folder", load_hf_folder)

    checkpoint = load_checkpoint(str(tmp_path), progress=False)

    assert calls == [(tmp_path, expected_tensors, False)]
    assert checkpoint.name == tmp_path.name
