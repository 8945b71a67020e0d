"""The tensors a family's config.json implies: checkpoints saved by transformers hold exactly those, and
mixture-of-experts folders whose tensors disagree with their config.json fail before any weight is read,
with an error naming the tensor and what config.json implies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    Llama4ForCausalLM,
    Llama4TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from kilotok.errors import ModelFormatError
from kilotok.models.family import expected_shapes, last_dense_mlp
from kilotok.models.registry import FAMILIES, expected_tensors, load_checkpoint, model_config

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)


def saved(folder: Path, model) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    return folder


def llama4(**overrides):
    return Llama4ForCausalLM(Llama4TextConfig(**(SMALL | dict(num_local_experts=4, intermediate_size_mlp=24,
                                                                 attention_chunk_size=4) | overrides)))


def mixtral(experts: int = 4):
    return MixtralForCausalLM(MixtralConfig(num_local_experts=experts, **SMALL))


def qwen3_moe(**overrides):
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**(SMALL | dict(num_experts=4, num_experts_per_tok=2,
                                                                 moe_intermediate_size=16) | overrides)))


MODELS = {
    "llama-tied-biases": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True, attention_bias=True,
                                                              mlp_bias=True)),
    "llama4-interleaved": lambda: llama4(interleave_moe_layer_step=2),
    "mixtral": mixtral,
    "qwen3-moe-dense-layer": lambda: qwen3_moe(mlp_only_layers=[0]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_expected_shapes_are_those_transformers_saves(tmp_path, name):
    folder = saved(tmp_path, MODELS[name]())
    with safe_open(folder / "model.safetensors", "pt") as stored:
        names = stored.keys()
        shapes = {key: tuple(stored.get_slice(key).get_shape()) for key in names}
    config = json.loads((folder / "config.json").read_text())

    expected = expected_tensors(config, list(shapes))

    assert shapes.keys() <= expected.shapes.keys()
    assert {key: expected.shapes[key] for key in shapes} == shapes
    tied = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
    assert expected.shapes.keys() - shapes.keys() == expected.optional == tied


def test_last_dense_mlp_is_the_last_layer_without_experts():
    def last(model) -> str | None:
        config = model_config(model.config.to_dict())
        return last_dense_mlp(config, FAMILIES[config.architecture])

    assert last(llama4(num_hidden_layers=4, interleave_moe_layer_step=2)) == "model.layers.2.feed_forward."
    assert last(qwen3_moe(mlp_only_layers=[0])) == "model.layers.0.mlp."
    assert last(mixtral()) is None
    llama = model_config(LlamaConfig(**SMALL).to_dict())
    assert last_dense_mlp(llama, FAMILIES["llama"]) == "model.layers.1.mlp."
    assert "model.layers.1.mlp.up_proj.weight" in expected_shapes(llama, FAMILIES["llama"])


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


MISMATCHES = {  # model saved, config.json changes, what the error must name
    "llama4-expert-count-names-the-router": (
        llama4, dict(num_local_experts=3), r"router\.weight.*shape \(4, 32\).*implies \(3, 32\)"),
    "llama4-expert-width-names-the-fused-tensor": (
        llama4, dict(intermediate_size=12), r"experts\.gate_up_proj'.*shape \(4, 32, 32\).*implies \(4, 32, 24\)"),
    "experts-on-a-layer-the-config-makes-dense": (
        lambda: llama4(interleave_moe_layer_step=1), dict(moe_layers=[1]),
        r"model\.layers\.0\.feed_forward\.experts.*dense layer"),
    "mixtral-more-experts-than-configured-names-the-extra-expert": (
        mixtral, dict(num_local_experts=2), r"block_sparse_moe\.experts\.2\..*2 experts per MoE layer"),
    "mixtral-fewer-experts-than-configured-names-the-router": (
        mixtral, dict(num_local_experts=6, num_experts_per_tok=2),
        r"block_sparse_moe\.gate\.weight'.*shape \(4, 32\).*implies \(6, 32\)"),
    "qwen3-expert-width-names-the-tensor": (
        qwen3_moe, dict(moe_intermediate_size=20), r"mlp\.experts\.0\.gate_proj\.weight'.*\(16, 32\).*\(20, 32\)"),
}


@pytest.mark.parametrize("make_model,changes,message", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_tensors_disagreeing_with_config_are_named_before_loading(tmp_path, make_model, changes, message):
    """The check runs before any weight (or the tokenizer, which these folders lack) is read."""
    folder = saved(tmp_path, make_model())
    edit_config(folder, **changes)
    with pytest.raises(ModelFormatError, match=message):
        load_checkpoint(str(folder), progress=False)
