"""Hugging Face folders written by transformers load back tensor for tensor, with their config.json as it is,
and bad folders fail clearly (checked against what the model family says the config implies)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Llama4ForCausalLM,
    Llama4TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.loader.checkpoint import ExpectedTensors
from kilotok.loader.hf_loader import load_hf_folder, load_hf_weights, read_hf_config
from kilotok.models.registry import expected_tensors

SMALL_LLAMA = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
# Small enough that each of the test models splits into several shards with an index.
SMALL_SHARD = "8KB"


@pytest.fixture
def tokenizer_stub(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stand in for the tokenizer loader (tested on its own), recording the folders it is asked for."""
    requested: list[Path] = []

    def tokenizer_from_hf_folder(folder: Path) -> str:
        requested.append(folder)
        return "tokenizer"

    stub = types.ModuleType("kilotok.tokenizer.tokenizer")
    stub.tokenizer_from_hf_folder = tokenizer_from_hf_folder
    monkeypatch.setitem(sys.modules, "kilotok.tokenizer.tokenizer", stub)
    return requested


def save_model(folder: Path, config, model_class=LlamaForCausalLM, dtype=torch.float32, shard=False):
    torch.manual_seed(0)
    model = model_class(config).to(dtype)
    model.save_pretrained(folder, **({"max_shard_size": SMALL_SHARD} if shard else {}))
    return model


def assert_same_tensors(weights: dict, model) -> None:
    expected = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    assert sorted(weights) == sorted(expected)
    for name, tensor in expected.items():
        assert weights[name].dtype == tensor.dtype, name
        assert torch.equal(weights[name], tensor), name


def load_checked(folder: Path):
    """Load as kilotok does: names and shapes checked against the config before any tensor is read."""
    return load_hf_folder(folder, expected_tensors, progress=False)


def saved_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


LLAMA_VARIANTS = {
    "untied-llama3-rope-single-file": (dict(rope_parameters=LLAMA3_ROPE, eos_token_id=[2, 5]), torch.float32,
                                       False),
    "tied-biases-head-dim-sharded": (dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                          head_dim=16, rope_theta=12345.0), torch.float32, True),
    "bf16-llama3-rope-sharded": (dict(rope_parameters=LLAMA3_ROPE), torch.bfloat16, True),
}


@pytest.mark.parametrize("overrides,dtype,shard", LLAMA_VARIANTS.values(), ids=LLAMA_VARIANTS.keys())
def test_llama_folder_loads_as_saved(tmp_path, tokenizer_stub, overrides, dtype, shard):
    hf_config = LlamaConfig(**SMALL_LLAMA, **overrides)
    model = save_model(tmp_path, hf_config, dtype=dtype, shard=shard)
    assert (tmp_path / "model.safetensors.index.json").is_file() == shard

    checkpoint = load_checked(tmp_path)

    assert_same_tensors(checkpoint.weights, model)
    assert checkpoint.config == saved_config(tmp_path)
    assert (checkpoint.tokenizer, checkpoint.name, checkpoint.path) == ("tokenizer", tmp_path.name, tmp_path)
    assert tokenizer_stub == [tmp_path]


def test_mistral_without_sliding_window_loads_as_llama(tmp_path, tokenizer_stub):
    hf_config = MistralConfig(**SMALL_LLAMA, sliding_window=None)
    model = save_model(tmp_path, hf_config, model_class=MistralForCausalLM)
    checkpoint = load_checked(tmp_path)
    assert_same_tensors(checkpoint.weights, model)
    assert checkpoint.config == saved_config(tmp_path)


def test_loader_asks_expect_with_the_config_and_the_names_found(tmp_path, tokenizer_stub):
    """The loader checks exactly what `expect` returns; an optional tensor may be missing."""
    model = save_model(tmp_path, LlamaConfig(**SMALL_LLAMA, tie_word_embeddings=True))
    calls = []

    def expect(config: dict, names: list[str]) -> ExpectedTensors:
        calls.append((config, sorted(names)))
        return ExpectedTensors({"model.norm.weight": (32,), "lm_head.weight": (96, 32)},
                               optional=frozenset({"lm_head.weight"}))

    load_hf_folder(tmp_path, expect, progress=False)
    assert calls == [(saved_config(tmp_path), sorted(model.state_dict().keys() - {"lm_head.weight"}))]


@pytest.mark.slow
def test_folder_with_real_tokenizer(tmp_path, hf_reference_tokenizer):
    pytest.importorskip("kilotok.tokenizer.tokenizer")
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA))
    hf_reference_tokenizer.save_pretrained(tmp_path)
    text = "Hello, kilotok! Ünïcode and  spaces."
    tokenizer = load_checked(tmp_path).tokenizer
    assert tokenizer.encode(text) == hf_reference_tokenizer.encode(text)


def test_llama4_multimodal_folder_reads_only_the_language_model(tmp_path):
    torch.manual_seed(0)
    Llama4ForCausalLM(Llama4TextConfig(**SMALL_LLAMA, head_dim=8, num_local_experts=4, intermediate_size_mlp=24,
                                       attention_chunk_size=4)).save_pretrained(tmp_path)
    weights = load_hf_weights(tmp_path, saved_config(tmp_path), expected_tensors, progress=False)
    stored = load_file(tmp_path / "model.safetensors")
    renamed = {f"language_model.{name}": t for name, t in stored.items()} | {"vision_model.stem": torch.zeros(3)}
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    text_config = saved_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Llama4ForConditionalGeneration"],
                                                      "model_type": "llama4", "text_config": text_config}))
    reloaded = load_hf_weights(tmp_path, read_hf_config(tmp_path), expected_tensors, progress=False)
    assert sorted(reloaded) == sorted(weights)
    assert all(torch.equal(reloaded[name], weights[name]) for name in weights)


def llama_dict(**changes) -> dict:
    raw = LlamaConfig(**SMALL_LLAMA).to_dict()
    raw.update(changes)
    return raw


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_checked(tmp_path / "nowhere")
    with pytest.raises(ModelFormatError, match="no config.json"):
        load_checked(tmp_path)


def test_pytorch_bin_checkpoint_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(llama_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelFormatError, match=r"pytorch_model\.bin.*convert them to safetensors"):
        load_checked(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA), shard=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.norm.weight"]
    (tmp_path / shard).unlink()
    with pytest.raises(ModelFormatError, match=f"shard '{shard}'.*missing"):
        load_checked(tmp_path)


def test_index_and_shards_that_disagree(tmp_path):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA), shard=True)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    weight_map = index["weight_map"]
    other_shard = next(shard for shard in weight_map.values() if shard != weight_map["model.norm.weight"])
    index_path.write_text(json.dumps({**index, "weight_map": {**weight_map, "model.norm.weight": other_shard}}))
    with pytest.raises(ModelFormatError, match=rf"'model\.norm\.weight' in {tmp_path / other_shard}, which lacks "
                                               "it: .*download or copy the model folder again"):
        load_checked(tmp_path)


@pytest.mark.parametrize("file", ["config.json", "model.safetensors.index.json"])
def test_unreadable_json_is_named(tmp_path, file):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA), shard=True)
    (tmp_path / file).write_text("{oops")
    with pytest.raises(ModelFormatError, match=f"{tmp_path / file} is not readable JSON .*download or copy"):
        load_checked(tmp_path)


def rewrite_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_missing_tensor_is_named(tmp_path):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA))
    rewrite_weights(tmp_path, lambda tensors: tensors.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelFormatError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_checked(tmp_path)


def test_untied_checkpoint_needs_lm_head(tmp_path):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA))
    rewrite_weights(tmp_path, lambda tensors: tensors.pop("lm_head.weight"))
    with pytest.raises(ModelFormatError, match=r"'lm_head\.weight' is missing"):
        load_checked(tmp_path)


def test_shape_disagreeing_with_config(tmp_path):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "intermediate_size": 64}))
    with pytest.raises(ModelFormatError, match=r"gate_proj\.weight.*\(48, 32\).*\(64, 32\)"):
        load_checked(tmp_path)


def test_integer_weight_is_rejected(tmp_path):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA))
    integer_norm = {"model.norm.weight": torch.ones(32, dtype=torch.int8)}
    rewrite_weights(tmp_path, lambda tensors: tensors.update(integer_norm))
    with pytest.raises(ModelFormatError, match=r"'model\.norm\.weight' has dtype I8"):
        load_checked(tmp_path)


def test_corrupt_safetensors_file(tmp_path):
    save_model(tmp_path, LlamaConfig(**SMALL_LLAMA))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        load_checked(tmp_path)
