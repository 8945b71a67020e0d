"""Counters of speculative decoding, kept per request and summed over the engine's life."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecStats:
    drafted_tokens: int = 0
    """Draft nodes sent to verification (every node of every tree)."""
    accepted_tokens: int = 0
    emitted_tokens: int = 0
    """Accepted plus bonus tokens actually kept (a stop condition can cut a step short)."""
    target_forwards: int = 0
    """Verify forwards of the target (the prefill is not counted)."""
    drafted_by_depth: list[int] = field(default_factory=list)
    """Steps whose tree reached depth d + 1."""
    accepted_by_depth: list[int] = field(default_factory=list)
    """Steps that accepted a node at depth d + 1."""

    def record(self, drafted: int, max_depth: int, accepted: int, emitted: int) -> None:
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        self.emitted_tokens += emitted
        self.target_forwards += 1
        _add_ones(self.drafted_by_depth, max_depth)
        _add_ones(self.accepted_by_depth, accepted)

    def merge(self, other: SpecStats) -> None:
        self.drafted_tokens += other.drafted_tokens
        self.accepted_tokens += other.accepted_tokens
        self.emitted_tokens += other.emitted_tokens
        self.target_forwards += other.target_forwards
        for mine, theirs in ((self.drafted_by_depth, other.drafted_by_depth),
                             (self.accepted_by_depth, other.accepted_by_depth)):
            mine.extend([0] * (len(theirs) - len(mine)))
            for depth, count in enumerate(theirs):
                mine[depth] += count

    @property
    def acceptance_length(self) -> float:
        """Tokens emitted per target forward: 1.0 means speculation gained nothing."""
        return self.emitted_tokens / self.target_forwards if self.target_forwards else 1.0

    @property
    def acceptance_by_depth(self) -> list[float]:
        """Of the steps that drafted to depth d + 1, the fraction that accepted a node there."""
        accepted = self.accepted_by_depth + [0] * (len(self.drafted_by_depth) - len(self.accepted_by_depth))
        pairs = zip(accepted, self.drafted_by_depth, strict=True)
        return [hits / drafted if drafted else 0.0 for hits, drafted in pairs]


def _add_ones(counts: list[int], depth: int) -> None:
    counts.extend([0] * (depth - len(counts)))
    for index in range(depth):
        counts[index] += 1
