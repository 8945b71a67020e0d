"""What the caller sees of a request (`RequestOutput`), and how sampled tokens become it: text, and the
decision that a request is finished (EOS, stop tokens, stop strings, max_tokens, the context window).
The text state this works on is the request's own (`Sequence.text`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.tokenizer.detokenizer import IncrementalDetokenizer, TextState
from kilotok.tokenizer.tokenizer import Tokenizer


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None
    """"stop" (EOS, a stop token or a stop string), "length" (max_tokens or the context window), or None
    while the request is still running."""
    ttft_s: float
    """Time to first token: from the request's arrival to its first sampled token."""
    decode_tokens_per_s: float
    """Output tokens after the first, per second of decoding: the speed a user sees the answer stream."""
    e2e_s: float
    delta_text: str = ""
    """Text added since the previous update, for streaming."""
    acceptance_length: float = 1.0
    """Speculative decoding: tokens emitted per target forward while decoding (1.0 without it)."""
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    target_forwards: int = 0
    """Decode forwards of the target (verify steps with speculation)."""

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def to_json_dict(self) -> dict:
        record = asdict(self)
        record.pop("delta_text")
        record["num_prompt_tokens"] = self.num_prompt_tokens
        record["num_output_tokens"] = self.num_output_tokens
        return record


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def new_text_state(self) -> TextState:
        return TextState(IncrementalDetokenizer(self.tokenizer))

    def append(self, seq: Sequence, token_id: int, now: float) -> str | None:
        """Record one sampled token; returns the finish reason if the request is now done."""
        seq.append_token(token_id, now)
        state = seq.text
        reason = self._finish_reason(seq, token_id, state)
        if reason is not None and not state.stopped_by_string:
            # The detokenizer holds back a half-written character; a finished request has no more bytes.
            state.text += state.detokenizer.flush()
        return reason

    def output(self, seq: Sequence) -> RequestOutput:
        """What the caller sees of `seq` now; `delta_text` is the text released since the last call."""
        first = seq.first_token_time or seq.arrival_time
        last = seq.last_token_time or first
        decode_time = last - first
        stats = seq.spec_stats
        return RequestOutput(
            request_id=seq.seq_id,
            prompt_token_ids=seq.prompt_token_ids,
            text=seq.text.text,
            token_ids=seq.output_token_ids,
            finish_reason=seq.finish_reason,
            ttft_s=first - seq.arrival_time,
            decode_tokens_per_s=(seq.num_output_tokens - 1) / decode_time if decode_time > 0 else 0.0,
            e2e_s=last - seq.arrival_time,
            delta_text=self._take_delta(seq),
            acceptance_length=stats.acceptance_length,
            drafted_tokens=stats.drafted_tokens,
            accepted_tokens=stats.accepted_tokens,
            target_forwards=stats.target_forwards,
        )

    @staticmethod
    def _take_delta(seq: Sequence) -> str:
        """New text since the last call. While running, the tail that could still turn out to be the
        start of a stop string is held back, so streamed text never has to be taken back."""
        state = seq.text
        end = len(state.text)
        if seq.params.stop and not seq.is_finished:
            end -= max(len(s) for s in seq.params.stop) - 1
        delta = state.text[state.emitted : max(end, state.emitted)]
        state.emitted += len(delta)
        return delta

    def _finish_reason(self, seq: Sequence, token_id: int, state: TextState) -> str | None:
        params = seq.params
        if not params.ignore_eos and token_id in self.tokenizer.eos_token_ids:
            return "stop"
        if params.stop_token_ids and token_id in params.stop_token_ids:
            return "stop"
        previous_len = len(state.text)
        state.text += state.detokenizer.add(token_id)
        if params.stop and _truncate_at_stop_string(state, previous_len, params):
            state.stopped_by_string = True
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or len(seq) >= self.max_model_len:
            return "length"
        return None


def _truncate_at_stop_string(state: TextState, previous_len: int, params: SamplingParams) -> bool:
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
