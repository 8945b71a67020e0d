"""kilotok's perplexity of the default model in fp32 against transformers' own loss on the same tokens."""

from __future__ import annotations

import pytest
import torch

from kilotok.eval.perplexity import score_tokens
from kilotok.eval.sequence_logits import SequenceLogits
from kilotok.eval.texts import load_text
from kilotok.loader.registry import load_checkpoint
from kilotok.models.builder import build_model

NUM_TOKENS = 300
CONTEXT_LEN = 128


@pytest.fixture(scope="module")
def fp32_scorer_and_tokens():
    checkpoint = load_checkpoint("smollm2-135m", progress=False)
    tokens = checkpoint.tokenizer.encode(load_text("hamlet"))[:NUM_TOKENS]
    model = build_model(checkpoint, "fp32", progress=False)
    return SequenceLogits(model, CONTEXT_LEN), tokens


@torch.inference_mode()
def transformers_total_nll(model, tokens: list[int], context_len: int, stride: int) -> tuple[float, int]:
    """The sliding-window recipe of transformers' perplexity guide: each window's labels hide the
    tokens an earlier window already scored, and the model's loss averages over the rest."""
    ids = torch.tensor([tokens])
    total, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + context_len, len(tokens))
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, : -(end - previous_end)] = -100
        scored = int((labels[:, 1:] != -100).sum())
        total += model(input_ids=window, labels=labels).loss.double().item() * scored
        count += scored
        previous_end = end
        if end == len(tokens):
            break
    return total, count


@pytest.mark.slow
@pytest.mark.parametrize("stride", [CONTEXT_LEN, 80])
def test_fp32_perplexity_matches_transformers(fp32_scorer_and_tokens, hf_reference_model, stride):
    scorer, tokens = fp32_scorer_and_tokens
    ours = score_tokens(scorer, tokens, CONTEXT_LEN, stride)
    expected_total, expected_count = transformers_total_nll(hf_reference_model, tokens, CONTEXT_LEN, stride)
    assert ours.num_tokens == expected_count
    assert ours.mean_nll == pytest.approx(expected_total / expected_count, rel=1e-4)
    assert ours.perplexity == pytest.approx(torch.tensor(expected_total / expected_count).exp().item(), rel=1e-4)


@pytest.mark.slow
@torch.inference_mode()
def test_every_position_logits_match_transformers(fp32_scorer_and_tokens, hf_reference_model):
    scorer, tokens = fp32_scorer_and_tokens
    window = tokens[:CONTEXT_LEN]
    expected = hf_reference_model(torch.tensor([window])).logits[0]
    assert (scorer(window) - expected).abs().max().item() < 1e-3
