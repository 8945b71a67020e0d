"""Turning generated token ids into text one step at a time, for streaming.

Byte-level BPE splits a multibyte character across tokens, so the text of a token on its own can end in
half a character (decoded as U+FFFD). Re-decoding the whole reply every step would be exact but quadratic;
instead we decode a short window: from the last point where the text was known to be clean to the newest
token. The window's start lies on a character boundary, so its text is exactly the tail of the full text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

_REPLACEMENT_CHAR = "\ufffd"


class _Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Feed ids with `add`; it returns only text that is final. `flush` returns what is held back at the end.

    The deltas of all `add` calls plus `flush` concatenate to `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: _Decoder, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        # Text of ids[:prefix_offset] has been emitted and ends on a character boundary; ids from
        # prefix_offset to read_offset have been emitted too and are decoded again only as context.
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_ids: int | Iterable[int]) -> str:
        """Append one id or several; return the newly completed text (possibly empty)."""
        self._ids.extend([token_ids] if isinstance(token_ids, int) else token_ids)
        emitted = self._decode(self._prefix_offset, self._read_offset)
        window = self._decode(self._prefix_offset, len(self._ids))
        if len(window) <= len(emitted) or window.endswith(_REPLACEMENT_CHAR):
            return ""  # nothing new, or the newest bytes may still be the start of a character
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return window[len(emitted):]

    def flush(self) -> str:
        """The held-back tail once generation has ended (e.g. a reply that stops in mid-character)."""
        emitted = self._decode(self._prefix_offset, self._read_offset)
        tail = self._decode(self._prefix_offset, len(self._ids))[len(emitted):]
        self._prefix_offset = self._read_offset = len(self._ids)
        return tail

    def _decode(self, start: int, stop: int) -> str:
        if start >= stop:
            return ""
        return self._tokenizer.decode(self._ids[start:stop], skip_special_tokens=self._skip_special_tokens)


@dataclass
class TextState:
    """The text of one request's output as it streams: what the detokenizer has released, how much of it
    was handed out as deltas, and whether a stop string cut it."""

    detokenizer: IncrementalDetokenizer
    text: str = ""
    emitted: int = 0
    """Characters of `text` already handed out as stream deltas."""
    stopped_by_string: bool = False
