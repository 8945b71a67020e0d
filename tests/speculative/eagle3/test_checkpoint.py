"""Heads on disk: the EAGLE-3 reference layout, lossless round trips, loud failures on the wrong target."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.speculative.eagle3 import default_draft_path, load_eagle3, save_eagle3
from tests.speculative.eagle3.heads import TARGET, causal, make_draft

D, HEADS, KV_HEADS, HEAD_DIM, FFN, DRAFT_VOCAB = 32, 4, 2, 8, 48, 40
# The tensors of a published EAGLE-3 head (e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B), for this tiny shape.
REFERENCE_LAYOUT = {
    "fc.weight": (D, 3 * D),
    "midlayer.input_layernorm.weight": (D,),
    "midlayer.hidden_norm.weight": (D,),
    "midlayer.self_attn.q_proj.weight": (HEADS * HEAD_DIM, 2 * D),
    "midlayer.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, 2 * D),
    "midlayer.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, 2 * D),
    "midlayer.self_attn.o_proj.weight": (D, HEADS * HEAD_DIM),
    "midlayer.post_attention_layernorm.weight": (D,),
    "midlayer.mlp.gate_proj.weight": (FFN, D),
    "midlayer.mlp.up_proj.weight": (FFN, D),
    "midlayer.mlp.down_proj.weight": (D, FFN),
    "norm.weight": (D,),
    "lm_head.weight": (DRAFT_VOCAB, D),
    "d2t": (DRAFT_VOCAB,),
    "t2d": (97,),
}


@pytest.fixture
def saved(tmp_path):
    model = make_draft()
    model.set_draft_vocab(torch.randperm(97, generator=torch.Generator().manual_seed(1))[:DRAFT_VOCAB])
    save_eagle3(model, tmp_path, training={"tokens_seen": 123}, dtype=torch.float32)
    return model, tmp_path


def test_file_has_reference_tensor_names_shapes_and_dtypes(saved):
    _, folder = saved
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
        assert handle.get_tensor("d2t").dtype == torch.int64
        assert handle.get_tensor("t2d").dtype == torch.bool
    assert shapes == REFERENCE_LAYOUT


def test_config_has_reference_and_kilotok_fields(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert (config["draft_vocab_size"], config["vocab_size"], config["hidden_size"]) == (DRAFT_VOCAB, 97, D)
    assert config["num_hidden_layers"] == 1
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5]
    assert config["kilotok"]["target"] == {"architecture": "llama", "hidden_size": D, "vocab_size": 97,
                                           "num_layers": 8}
    assert config["kilotok"]["training"] == {"tokens_seen": 123}


@torch.no_grad()
def test_round_trip_gives_identical_outputs(saved):
    model, folder = saved
    loaded = load_eagle3(folder, TARGET, model.embed_tokens.weight)
    ids, hidden, positions = torch.randint(0, 97, (2, 6)), torch.randn(2, 6, 32), torch.arange(6).expand(2, 6)
    expected = model(ids, hidden, positions, None, None, causal(6, 2))
    got = loaded(ids, hidden, positions, None, None, causal(6, 2))
    assert torch.equal(got.logits, expected.logits) and torch.equal(got.hidden, expected.hidden)
    assert torch.equal(loaded.draft_to_target(torch.arange(DRAFT_VOCAB)), model.draft_to_target(torch.arange(40)))


def test_fp16_save_is_half_size_and_close(tmp_path, saved):
    model, _ = saved
    save_eagle3(model, tmp_path / "half")
    loaded = load_eagle3(tmp_path / "half", TARGET, model.embed_tokens.weight)
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight.half().float())


def test_loading_against_another_target_names_every_mismatch(saved):
    model, folder = saved
    other = replace(TARGET, hidden_size=64, vocab_size=100, num_layers=4, intermediate_size=48)
    with pytest.raises(ModelFormatError) as error:
        load_eagle3(folder, other, torch.zeros(100, 64))
    message = str(error.value)
    for expected in ("hidden_size: head trained for 32, target has 64", "vocab_size: head trained for 97",
                     "num_layers: head trained for 8, target has 4", "aux layer ids [4, 5] are outside"):
        assert expected in message


def test_head_without_kilotok_record_loads_from_reference_fields(saved):
    """A head trained elsewhere carries only the reference config; it must still load."""
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    del config["kilotok"], config["eagle_aux_hidden_state_layer_ids"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_eagle3(folder, TARGET, model.embed_tokens.weight)
    assert loaded.config.aux_layer_ids == (2, 4, 5)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_missing_tensor_and_wrong_architecture_are_reported(saved, tmp_path):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelFormatError, match="not an EAGLE-3 head"):
        load_eagle3(folder, TARGET, model.embed_tokens.weight)
    (folder / "config.json").write_text(json.dumps({**config, "draft_vocab_size": 41}))
    with pytest.raises(ModelFormatError, match="lm_head.weight"):
        load_eagle3(folder, TARGET, model.embed_tokens.weight)


def test_unknown_model_has_no_shipped_head():
    assert default_draft_path("no-such-model") is None



def _rewrite_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _rewrite_tensors(folder, **changes):
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, **changes}, folder / "model.safetensors")


def _write_header_length(folder):
    """The known case: this ended in safetensors' own `SafetensorError` and a traceback."""
    path = folder / "model.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + path.read_bytes()[8:])


def _truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-64])


BAD_HEADS = {
    "header length": ("model.safetensors", _write_header_length, "not a readable safetensors file .*header too large"),
    "truncated": ("model.safetensors", _truncate, "not a readable safetensors file .*truncated or corrupt"),
    "no weights": ("model.safetensors", lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
    "config not JSON": ("config.json", lambda f: (f / "config.json").write_text("{oops"), "not readable JSON"),
    "config not UTF-8": ("config.json", lambda f: (f / "config.json").write_bytes(b'{"a": "\xff"}'),
                         "not readable JSON"),
    "config a list": ("config.json", lambda f: (f / "config.json").write_text("[1]"), "a JSON object, not list"),
    "size not a number": ("config.json", lambda f: _rewrite_config(f, hidden_size="wide"),
                          "'hidden_size' must be a positive integer, got 'wide'"),
    "no heads": ("config.json", lambda f: _rewrite_config(f, num_key_value_heads=0),
                 "'num_key_value_heads' must be a positive integer, got 0"),
    "bad aux ids": ("config.json", lambda f: _rewrite_config(f, kilotok={"aux_layer_ids": ["a"]}),
                    "malformed field: invalid literal"),
    "wrong shape": ("model.safetensors", lambda f: _rewrite_tensors(f, **{"fc.weight": torch.zeros(3, 3)}),
                    r"fc.weight has shape \(3, 3\), expected \(32, 96\)"),
    "integer weight": ("model.safetensors",
                       lambda f: _rewrite_tensors(f, **{"norm.weight": torch.ones(32, dtype=torch.int32)}),
                       "norm.weight is int32, expected floating-point values"),
    "float vocabulary map": ("model.safetensors", lambda f: _rewrite_tensors(f, d2t=torch.zeros(DRAFT_VOCAB) + 0.5),
                             "d2t is float32, expected integer values"),
    "vocabulary map out of range": (
        "model.safetensors", lambda f: _rewrite_tensors(f, d2t=torch.full((DRAFT_VOCAB,), 97, dtype=torch.int64)),
        r"d2t maps draft ids \[0, 1, 2, 3, 4\] outside the target vocabulary \[0, 97\)"),
}


@pytest.mark.parametrize(("file", "damage", "fault"), BAD_HEADS.values(), ids=BAD_HEADS.keys())
def test_a_bad_head_file_is_named_with_its_fault(saved, file, damage, fault):
    model, folder = saved
    damage(folder)
    with pytest.raises(ModelFormatError, match=fault) as error:
        load_eagle3(folder, TARGET, model.embed_tokens.weight)
    message = str(error.value)
    assert str(folder) in message and file in message and "kilotok train-draft" in message


def test_a_missing_head_says_what_to_pass(tmp_path):
    with pytest.raises(ModelNotFoundError, match="the folder does not exist; pass --draft an EAGLE-3 head folder"):
        load_eagle3(tmp_path / "absent", TARGET, torch.zeros(97, 32))
    with pytest.raises(ModelNotFoundError, match="config.json is missing; pass --draft"):
        load_eagle3(tmp_path, TARGET, torch.zeros(97, 32))
