"""How closely a candidate's greedy answers follow a reference's, token by token.

For one prompt, with reference answer r and candidate answer c (each at most max_tokens tokens, ending
early only at end-of-sequence), the compared span is n = max(len(r), len(c)) tokens:
- prefix agreement: the tokens before the first position where they differ, over n. Once greedy
  outputs differ, the rest is conditioned on different text, so this is the share that truly agrees.
- position-wise agreement: the positions i < min(len(r), len(c)) with r[i] == c[i], over n. It also
  counts chance matches after a divergence, so it is at least the prefix agreement.
Over a prompt set both are token-weighted: the sums of the numerators over the sum of the spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def common_prefix_length(reference: Sequence[int], candidate: Sequence[int]) -> int:
    for index, (expected, actual) in enumerate(zip(reference, candidate, strict=False)):
        if expected != actual:
            return index
    return min(len(reference), len(candidate))


def matching_positions(reference: Sequence[int], candidate: Sequence[int]) -> int:
    return sum(expected == actual for expected, actual in zip(reference, candidate, strict=False))


@dataclass(frozen=True)
class AgreementCounts:
    compared_tokens: int
    prefix_tokens: int
    matching_tokens: int
    identical_answers: int
    num_answers: int

    @property
    def prefix_agreement(self) -> float:
        return self.prefix_tokens / self.compared_tokens

    @property
    def positionwise_agreement(self) -> float:
        return self.matching_tokens / self.compared_tokens


def agreement_counts(references: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> AgreementCounts:
    """Counts over answer pairs (one reference and one candidate answer per prompt, in the same order)."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} reference answers but {len(candidates)} candidate answers")
    if not references:
        raise ValueError("agreement needs at least one answer pair")
    pairs = list(zip(references, candidates, strict=True))
    compared = sum(max(len(r), len(c)) for r, c in pairs)
    if compared == 0:
        raise ValueError("every answer is empty; nothing to compare")
    return AgreementCounts(
        compared_tokens=compared,
        prefix_tokens=sum(common_prefix_length(r, c) for r, c in pairs),
        matching_tokens=sum(matching_positions(r, c) for r, c in pairs),
        identical_answers=sum(list(r) == list(c) for r, c in pairs),
        num_answers=len(pairs),
    )
