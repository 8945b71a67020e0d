"""Greedy agreement: the arithmetic on hand-made answers, the prompt sets, and `kilotok eval agreement` end
to end on a tiny budget."""

from __future__ import annotations

import gzip
import json

import pytest

from kilotok.bench.prompts import HELD_OUT_PROMPTS
from kilotok.cli.main import main
from kilotok.errors import InvalidRequestError
from kilotok.eval.agreement import agreement_counts, common_prefix_length, load_prompt_set, matching_positions
from tests.loader.gguf_damage import damaged_default_model


def test_prefix_and_positions_on_hand_made_pairs():
    assert common_prefix_length([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert matching_positions([1, 2, 3, 4], [1, 2, 9, 4]) == 3
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [5]) == 0
    assert matching_positions([7, 8], [8, 7]) == 0


def test_counts_are_token_weighted_over_the_longer_answer():
    references = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    candidates = [[1, 2, 9, 4], [5, 6, 0, 0], [7, 8, 9]]
    counts = agreement_counts(references, candidates)
    # spans: 4, max(2, 4) = 4, 3; prefixes: 2, 2, 3; position matches: 3, 2, 3
    assert counts.compared_tokens == 11
    assert counts.prefix_agreement == pytest.approx(7 / 11)
    assert counts.positionwise_agreement == pytest.approx(8 / 11)
    assert counts.identical_answers == 1
    assert counts.num_answers == 3


def test_identical_answers_agree_fully():
    counts = agreement_counts([[3, 1, 4], [1, 5]], [[3, 1, 4], [1, 5]])
    assert counts.prefix_agreement == counts.positionwise_agreement == 1.0
    assert counts.identical_answers == 2


def test_mismatched_answer_lists_are_rejected():
    with pytest.raises(ValueError, match="2 reference answers but 1"):
        agreement_counts([[1], [2]], [[1]])
    with pytest.raises(ValueError):
        agreement_counts([], [])


def test_held_out_prompts_are_the_first_user_turns_in_file_order():
    with gzip.open(HELD_OUT_PROMPTS, "rt", encoding="utf-8") as lines:
        first = [json.loads(line)["prompt"] for line, _ in zip(lines, range(3), strict=False)]
    assert load_prompt_set("held-out", 3) == [[{"role": "user", "content": prompt}] for prompt in first]
    with pytest.raises(InvalidRequestError, match="more than the 200 held-out prompts"):
        load_prompt_set("held-out", 201)


def test_bench_prompt_set_and_bad_sets():
    assert len(load_prompt_set("bench", 2)) == 2
    for name, count in (("bench", 0), ("mt-bench", 2)):
        with pytest.raises(InvalidRequestError):
            load_prompt_set(name, count)


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_agreement_of_a_format_with_itself_is_complete(capsys):
    report = run_json(capsys, ["eval", "agreement", "--dtype", "fp32", "--reference-dtype", "fp32", "--prompts",
                               "bench", "--num-prompts", "2", "--max-tokens", "4", "--json"])
    assert report["num_prompts"] == 2
    assert 2 <= report["compared_tokens"] <= 8
    assert report["prefix_agreement"] == report["positionwise_agreement"] == 1.0
    assert report["identical_answers"] == 2


def test_too_many_bench_prompts_is_a_clear_error(capsys):
    assert main(["eval", "agreement", "--prompts", "bench", "--num-prompts", "99"]) == 2
    assert "more than the 8 bench prompts" in capsys.readouterr().err


def test_a_damaged_model_is_refused_not_measured(capsys, tmp_path, default_gguf_path):
    damaged = damaged_default_model(default_gguf_path, tmp_path)
    assert main(["eval", "agreement", "--model", str(damaged), "--prompts", "bench", "--num-prompts", "1"]) == 2
    assert f"{damaged}: 1 tensor holds NaN or infinity (model.layers.3.mlp.down_proj.weight" in capsys.readouterr().err
