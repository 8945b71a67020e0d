"""Mixture-of-experts folders whose tensors disagree with their config.json fail before any weight is read,
with an error naming the tensor and what config.json implies; bad MoE config fields fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    Llama4ForCausalLM,
    Llama4TextConfig,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from kilotok.errors import ModelFormatError
from kilotok.loader.hf_config import config_from_hf
from kilotok.loader.hf_loader import load_hf_weights, read_hf_config

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)


def saved(folder: Path, model) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def load(folder: Path):
    return load_hf_weights(folder, read_hf_config(folder), progress=False)


def llama4(**overrides):
    return Llama4ForCausalLM(Llama4TextConfig(**(SMALL | dict(num_local_experts=4, intermediate_size_mlp=24,
                                                                 attention_chunk_size=4) | overrides)))


def test_llama4_expert_count_disagreeing_with_config_names_the_fused_tensor(tmp_path):
    folder = saved(tmp_path, llama4())
    edit_config(folder, num_local_experts=3)
    with pytest.raises(ModelFormatError, match=r"router\.weight.*shape \(4, 32\).*implies \(3, 32\)"):
        load(folder)


def test_llama4_expert_width_disagreeing_with_config_names_the_tensor(tmp_path):
    folder = saved(tmp_path, llama4())
    edit_config(folder, intermediate_size=12)
    with pytest.raises(ModelFormatError, match=r"experts\.gate_up_proj'.*shape \(4, 32, 32\).*implies \(4, 32, 24\)"):
        load(folder)


def test_experts_on_a_layer_the_config_makes_dense_are_rejected(tmp_path):
    folder = saved(tmp_path, llama4(interleave_moe_layer_step=1))
    edit_config(folder, moe_layers=[1])
    with pytest.raises(ModelFormatError, match=r"model\.layers\.0\.feed_forward\.experts.*dense layer"):
        load(folder)


def test_mixtral_with_more_experts_than_configured_names_the_extra_expert(tmp_path):
    folder = saved(tmp_path, MixtralForCausalLM(MixtralConfig(num_local_experts=4, **SMALL)))
    edit_config(folder, num_local_experts=2)
    with pytest.raises(ModelFormatError, match=r"block_sparse_moe\.experts\.2\..*2 experts per MoE layer"):
        load(folder)


def test_mixtral_with_fewer_experts_than_configured_names_the_router(tmp_path):
    folder = saved(tmp_path, MixtralForCausalLM(MixtralConfig(num_local_experts=4, **SMALL)))
    edit_config(folder, num_local_experts=6, num_experts_per_tok=2)
    with pytest.raises(ModelFormatError, match=r"block_sparse_moe\.gate\.weight'.*shape \(4, 32\).*implies \(6, 32\)"):
        load(folder)


def test_qwen3_expert_shape_disagreeing_with_config_names_the_tensor(tmp_path):
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, **SMALL))
    folder = saved(tmp_path, model)
    edit_config(folder, moe_intermediate_size=20)
    with pytest.raises(ModelFormatError, match=r"mlp\.experts\.0\.gate_proj\.weight'.*\(16, 32\).*\(20, 32\)"):
        load(folder)


def test_llama4_multimodal_folder_reads_only_the_language_model(tmp_path):
    folder = saved(tmp_path, llama4())
    weights = load(folder)
    from safetensors.torch import load_file, save_file

    stored = load_file(folder / "model.safetensors")
    renamed = {f"language_model.{name}": t for name, t in stored.items()} | {"vision_model.stem": torch.zeros(3)}
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    text_config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({"architectures": ["Llama4ForConditionalGeneration"],
                                                     "model_type": "llama4", "text_config": text_config}))
    reloaded = load(folder)
    assert sorted(reloaded) == sorted(weights)
    assert all(torch.equal(reloaded[name], weights[name]) for name in weights)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(layer_types=["chunked_attention", "sliding_attention"]), "layer_types"),
    (dict(no_rope_layers=[1]), "no_rope_layers has 1 entries"),
    (dict(moe_layers=[0, 5]), r"moe layers \[5\] are outside"),
    (dict(num_experts_per_tok=5), "num_experts_per_tok"),
    (dict(intermediate_size=0), "intermediate_size"),
])
def test_bad_llama4_config_fields_are_rejected(changes, message):
    config = llama4().config.to_dict() | changes
    with pytest.raises(ModelFormatError, match=message):
        config_from_hf(config)


def test_multimodal_config_without_text_config_is_rejected():
    with pytest.raises(ModelFormatError, match="text_config"):
        config_from_hf({"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4"})
