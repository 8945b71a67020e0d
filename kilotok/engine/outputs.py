"""What a finished (or streaming) request returns to the caller."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
