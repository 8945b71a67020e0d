"""Prompt lookup against hand-worked contexts."""

from __future__ import annotations

from kilotok.speculative.ngram import NgramDrafter


def test_longest_tail_wins_and_latest_match_is_used():
    drafter = NgramDrafter(min_ngram=1, max_ngram=3, num_tokens=3)
    # Tail (1, 2, 3) occurs at 0 (followed by 9 9) and at 5 (followed by 4 5 6): the latest wins.
    assert drafter.lookup([1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 6, 1, 2, 3]) == [4, 5, 6]
    # Only the single-token tail 7 matches earlier.
    assert drafter.lookup([7, 8, 0, 1, 2, 7]) == [8, 0, 1]


def test_continuation_is_cut_at_the_context_end():
    drafter = NgramDrafter(min_ngram=1, max_ngram=2, num_tokens=5)
    assert drafter.lookup([4, 5, 6, 4, 5]) == [6, 4, 5]


def test_no_match_and_min_ngram():
    assert NgramDrafter(1, 3, 4).lookup([1, 2, 3, 4]) == []
    # With min_ngram 2 a single repeated token is not enough.
    assert NgramDrafter(2, 3, 4).lookup([5, 1, 2, 5]) == []
    assert NgramDrafter(1, 3, 4).lookup([5]) == []
