"""Agreement arithmetic on hand-made answers."""

from __future__ import annotations

import pytest

from kilotok.eval.agreement_metrics import agreement_counts, common_prefix_length, matching_positions


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
