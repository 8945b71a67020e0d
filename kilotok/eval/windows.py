"""How a long text is cut into windows for perplexity, so that each token is scored at most once.

Window i covers tokens [i * stride, i * stride + context_len). Its logits at position p predict token
p + 1, so a window can score any of its tokens but the first. Each window scores only the targets that
no earlier window scored: with stride == context_len (non-overlapping windows) that is every token but
the window's first; with a smaller stride, later windows give their first context_len - stride tokens
as context only, and every token after the text's first is scored exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from kilotok.errors import InvalidRequestError


@dataclass(frozen=True)
class Window:
    start: int
    """First token of the window (context only, never a target)."""
    end: int
    """One past the window's last token."""
    first_target: int
    """First token this window scores; it scores tokens first_target..end-1."""

    @property
    def num_targets(self) -> int:
        return self.end - self.first_target


def perplexity_windows(num_tokens: int, context_len: int, stride: int | None = None) -> list[Window]:
    """The windows over a text of `num_tokens` tokens; windows that would score nothing are left out."""
    stride = context_len if stride is None else stride
    if context_len < 2:
        raise InvalidRequestError(f"--context-len must be at least 2 tokens, got {context_len}")
    if not 1 <= stride <= context_len:
        raise InvalidRequestError(f"--stride must be between 1 and --context-len ({context_len}), got {stride}")
    windows: list[Window] = []
    scored_until = 1  # token 0 has no context, so nothing can predict it
    for start in range(0, max(num_tokens - 1, 0), stride):
        end = min(start + context_len, num_tokens)
        first_target = max(start + 1, scored_until)
        if end > first_target:
            windows.append(Window(start, end, first_target))
            scored_until = end
    return windows
