"""The default model quantized to FP8 blocks (576-wide layers: partial edge blocks) against transformers' fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from kilotok.quant.formats import resolve_weight_format
from kilotok.quant.quantize_checkpoint import quantize_checkpoint
from tests.models.paged_forward import prompt_logits

pytestmark = pytest.mark.slow
TEXT = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg"


@pytest.fixture(scope="module")
def fp8_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default") / "fp8"
    return quantize_checkpoint(load_checkpoint("smollm2-135m", progress=False), out, "fp8-block")


def test_fp8_block_folder_is_close_to_fp32(fp8_folder, hf_reference_model, hf_reference_tokenizer):
    ids = hf_reference_tokenizer.encode(TEXT)
    with torch.no_grad():
        expected = hf_reference_model(torch.tensor([ids])).logits[0]
    checkpoint = load_checkpoint(str(fp8_folder), progress=False)
    assert isinstance(checkpoint.weights["model.layers.0.self_attn.q_proj.weight"], Fp8Weight)
    fmt = resolve_weight_format("auto", checkpoint.weights)
    assert fmt.name == "fp8-stored"

    got = prompt_logits(build_model(checkpoint, fmt, progress=False), ids)

    relative = ((got - expected).norm() / expected.norm()).item()
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    print(f"fp8-block vs fp32: relative logit error {relative:.4f}, argmax agreement {agreement:.2f}")
    # Measured: 0.07-0.09 (weight rounding alone gives 0.065; int8 weights 0.044), agreement 0.93.
    assert relative < 0.15 and agreement >= 0.8


def test_written_tokenizer_matches_the_reference(fp8_folder, hf_reference_tokenizer):
    from transformers import AutoTokenizer

    folder = fp8_folder
    messages = [{"role": "user", "content": "Name three rivers."}]
    prompt = hf_reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = hf_reference_tokenizer.encode(prompt, add_special_tokens=False)

    ours = load_checkpoint(str(folder), progress=False).tokenizer
    theirs = AutoTokenizer.from_pretrained(folder)

    assert ours.encode_chat(messages) == expected
    assert theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
    assert theirs.encode(TEXT) == ours.encode(TEXT) == hf_reference_tokenizer.encode(TEXT)
    assert ours.eos_token_ids == (hf_reference_tokenizer.eos_token_id,)
