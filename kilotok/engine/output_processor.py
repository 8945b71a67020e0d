"""Turns sampled tokens into text and decides when a request is finished (EOS, stop tokens, stop
strings, max_tokens, the context window)."""

from __future__ import annotations

from dataclasses import dataclass

from kilotok.engine.detokenizer import IncrementalDetokenizer
from kilotok.engine.sequence import Sequence
from kilotok.loader.tokenizer import Tokenizer


@dataclass
class TextState:
    detokenizer: IncrementalDetokenizer
    text: str = ""
    emitted: int = 0
    """Characters of `text` already handed out as stream deltas."""
    stopped_by_string: bool = False


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.states: dict[int, TextState] = {}

    def start(self, seq: Sequence) -> None:
        self.states[seq.seq_id] = TextState(IncrementalDetokenizer(self.tokenizer))

    def text_of(self, seq: Sequence) -> str:
        return self.states[seq.seq_id].text

    def take_delta(self, seq: Sequence) -> str:
        """New text since the last call. While running, the tail that could still turn out to be the
        start of a stop string is held back, so streamed text never has to be taken back."""
        state = self.states[seq.seq_id]
        end = len(state.text)
        if seq.params.stop and not seq.is_finished:
            end -= max(len(s) for s in seq.params.stop) - 1
        delta = state.text[state.emitted : max(end, state.emitted)]
        state.emitted += len(delta)
        return delta

    def release(self, seq: Sequence) -> None:
        self.states.pop(seq.seq_id, None)

    def append(self, seq: Sequence, token_id: int, now: float) -> str | None:
        """Record one sampled token; returns the finish reason if the request is now done."""
        seq.append_token(token_id, now)
        state = self.states[seq.seq_id]
        reason = self._finish_reason(seq, token_id, state)
        if reason is not None and not state.stopped_by_string:
            # The detokenizer holds back a half-written character; a finished request has no more bytes.
            state.text += state.detokenizer.flush()
        return reason

    def _finish_reason(self, seq: Sequence, token_id: int, state: TextState) -> str | None:
        params = seq.params
        if not params.ignore_eos and token_id in self.tokenizer.eos_token_ids:
            return "stop"
        if params.stop_token_ids and token_id in params.stop_token_ids:
            return "stop"
        previous_len = len(state.text)
        state.text += state.detokenizer.add(token_id)
        if params.stop and self._truncate_at_stop_string(state, previous_len, params):
            state.stopped_by_string = True
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or len(seq) >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def _truncate_at_stop_string(state: TextState, previous_len: int, params) -> bool:
        longest = max(len(s) for s in params.stop)
        # A stop string can straddle the previous text and the new delta, never lie wholly before it.
        search_from = max(0, previous_len - longest + 1)
        found = [(state.text.find(s, search_from), s) for s in params.stop]
        found = [(index, s) for index, s in found if index >= 0]
        if not found:
            return False
        index, stop = min(found)
        state.text = state.text[: index + (len(stop) if params.include_stop_str_in_output else 0)]
        state.emitted = min(state.emitted, len(state.text))
        return True
