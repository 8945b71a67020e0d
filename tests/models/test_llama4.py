"""Llama 4 text models loaded from save_pretrained folders against transformers' Llama4ForCausalLM: chunked
local attention over prompts longer than a chunk, NoPE layers with temperature tuning, sigmoid top-k
experts plus the shared expert, in prefill and in both decode paths of the paged cache; bad Llama 4
config.json fields are rejected clearly."""

from __future__ import annotations

import pytest
import torch

from kilotok.errors import ModelFormatError
from kilotok.llm import LLM
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint, model_config
from kilotok.sampling_params import SamplingParams
from tests.models.moe_reference import perturb, random_prompts, save_folder
from tests.models.paged_forward import attach_cache, decode_step, paged_step

transformers = pytest.importorskip("transformers")

CHUNK = 8
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# Scattered, non-contiguous blocks (block size 4) so a wrong block-table lookup cannot pass by accident.
TABLES = [[7, 3, 20, 9, 30, 31, 32, 33], [1, 40, 2, 15, 43, 5, 6]]
ATOL = 1e-3


def llama4_config(**overrides):
    # floor_scale is tiny so that temperature tuning changes q within a short prompt.
    settings = dict(vocab_size=96, hidden_size=64, intermediate_size=32, intermediate_size_mlp=48,
                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    num_local_experts=4, interleave_moe_layer_step=2, attention_chunk_size=CHUNK, floor_scale=4,
                    attn_scale=0.5, max_position_embeddings=256, rope_parameters=LLAMA3_ROPE, initializer_range=0.05)
    return transformers.Llama4TextConfig(**(settings | overrides))


def random_llama4(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    # A sharper router makes top-1 choices far from ties, so they cannot flip on rounding.
    return perturb(transformers.Llama4ForCausalLM(llama4_config(**overrides)), seed, {"router": 5.0})


@pytest.fixture(scope="module")
def llama4_folder(tmp_path_factory):
    reference = random_llama4()
    return reference, save_folder(reference, tmp_path_factory.mktemp("llama4"))


def reference_logits(reference, tokens: list[int]) -> torch.Tensor:
    return reference(torch.tensor([tokens])).logits[0]


def assert_prefill_then_decode_match(reference, model) -> None:
    attach_cache(model, num_blocks=64)
    prompts = random_prompts((21, 13))
    assert max(len(p) for p in prompts) > 2 * CHUNK
    ours = paged_step(model, prompts, [0, 0], TABLES)
    for prompt, got in zip(prompts, ours, strict=True):
        torch.testing.assert_close(got, reference_logits(reference, prompt), atol=ATOL, rtol=0)
    # Decode through the gathered key window (the engine's decode path), crossing a chunk boundary.
    for _ in range(4):
        for prompt, logits in zip(prompts, ours, strict=True):
            prompt.append(int(logits[-1].argmax()))
        ours = [row[None] for row in decode_step(model, prompts, TABLES)]
        for prompt, got in zip(prompts, ours, strict=True):
            torch.testing.assert_close(got[0], reference_logits(reference, prompt)[-1], atol=ATOL, rtol=0)
    # And one token at a time through the paged reference op.
    cached = [len(p) for p in prompts]
    for prompt, logits in zip(prompts, ours, strict=True):
        prompt.append(int(logits[-1].argmax()))
    for prompt, got in zip(prompts, paged_step(model, prompts, cached, TABLES), strict=True):
        torch.testing.assert_close(got[0], reference_logits(reference, prompt)[-1], atol=ATOL, rtol=0)


@torch.inference_mode()
def test_llama4_folder_matches_transformers(llama4_folder):
    reference, folder = llama4_folder
    model = build_model(load_checkpoint(str(folder), progress=False), "fp32", progress=False)
    assert_prefill_then_decode_match(reference, model)


@pytest.mark.parametrize("overrides", [
    # Every layer MoE with two experts per token, no q/k norm, plain RoPE, NoPE every other layer.
    dict(interleave_moe_layer_step=1, num_experts_per_tok=2, use_qk_norm=False, rope_parameters=None,
         no_rope_layers=[1, 0, 1, 0]),
    # Dense and MoE layers given explicitly; temperature tuning off.
    dict(moe_layers=[0, 2], attn_temperature_tuning=False),
])
@torch.inference_mode()
def test_llama4_variants_match_transformers(tmp_path, overrides):
    reference = random_llama4(seed=2, **overrides)
    model = build_model(load_checkpoint(str(save_folder(reference, tmp_path)), progress=False), "fp32",
                        progress=False)
    assert_prefill_then_decode_match(reference, model)


@torch.inference_mode()
def test_llama4_conditional_generation_folder_runs_its_text_model(tmp_path):
    """A multimodal checkpoint: the text model's weights under `language_model.`, config in text_config."""
    text = llama4_config(num_hidden_layers=2)
    vision = transformers.Llama4VisionConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28,
        patch_size=14, vision_output_dim=16, projector_input_dim=16, projector_output_dim=16,
    )
    torch.manual_seed(4)
    config = transformers.Llama4Config(text_config=text.to_dict(), vision_config=vision.to_dict())
    multimodal = perturb(transformers.Llama4ForConditionalGeneration(config), 4, {"router": 5.0})
    save_folder(multimodal, tmp_path)
    checkpoint = load_checkpoint(str(tmp_path), progress=False)
    assert not any(name.startswith(("vision_model.", "language_model.")) for name in checkpoint.weights)
    model = build_model(checkpoint, "fp32", progress=False)
    assert_prefill_then_decode_match(multimodal.language_model.eval(), model)


@torch.inference_mode()
def test_llm_greedy_generation_matches_transformers(llama4_folder):
    """The whole engine (scheduler, padded decode batches, gathered key windows) against HF generate."""
    reference, folder = llama4_folder
    llm = LLM(str(folder), dtype="fp32", compile=False, progress=False, block_size=4)
    prompts = random_prompts((19, 6), seed=5)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    for prompt, output in zip(prompts, outputs, strict=True):
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(prompt):]
        assert output.token_ids == expected.tolist()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(layer_types=["chunked_attention"] * 3 + ["sliding_attention"]), r"layer_types has \['sliding_attention'\]"),
    (dict(layer_types=["chunked_attention"] * 3), "layer_types has 3 entries but the model has 4 layers"),
    (dict(no_rope_layers=[1]), "no_rope_layers has 1 entries"),
    (dict(moe_layers=[0, 5]), r"moe layers \[5\] are outside"),
    (dict(num_experts_per_tok=5), "num_experts_per_tok"),
    (dict(intermediate_size=0), "intermediate_size"),
])
def test_bad_llama4_config_fields_are_rejected(changes, message):
    with pytest.raises(ModelFormatError, match=message):
        model_config(llama4_config().to_dict() | changes)


def test_multimodal_config_without_text_config_is_rejected():
    with pytest.raises(ModelFormatError, match="text_config"):
        model_config({"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4"})
