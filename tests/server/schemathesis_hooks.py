"""What the schemathesis CLI loads for tests/server/test_schema.py (`hooks` in schemathesis.toml): a bound
on the work of each generating request, and the one check the built-in ones cannot make."""

from __future__ import annotations

import schemathesis

from kilotok.server.protocol import MAX_CHOICES

MAX_MODEL_LEN = 64
"""The tested server's context window: short prompts, so long prompts are refused, not prefilled."""
MOST_CHOICES = 2
MOST_TOKENS = 4
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


def _lowered(value: object, low: int, high: int) -> object:
    """`value` lowered to `low` if it is an integer in (low, high], else as it is."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return low if is_int and low < value <= high else value


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    """Keep each request that generates to at most 2 prompts times 2 choices of 4 tokens, so the run fits
    two CPU cores: values the schema allows are lowered, and a body with no output limit gets one. Values
    the schema forbids are sent as drawn, and schemathesis judges each case by the body actually sent."""
    body = case.body
    if case.operation.path not in GENERATION_PATHS or not isinstance(body, dict):
        return
    if "n" in body:
        body["n"] = _lowered(body["n"], MOST_CHOICES, MAX_CHOICES)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and MOST_CHOICES < len(prompt) <= MAX_CHOICES and isinstance(prompt[0], str | list):
        body["prompt"] = prompt[:MOST_CHOICES]
    limits = [name for name in ("max_tokens", "max_completion_tokens") if body.get(name) is not None]
    for name in limits:
        body[name] = _lowered(body[name], MOST_TOKENS, MAX_MODEL_LEN - 1)
    if not limits:
        body["max_tokens"] = MOST_TOKENS


@schemathesis.check
def refused_only_for_the_context_window(ctx, response, case) -> None:
    """schemathesis.toml lets positive_data_acceptance take a 400, because a request the schema allows can
    still be too long in tokens for the context window, which no JSON schema can state. Any other reason
    to refuse schema-valid data stays a failure: the server's other runtime refusals (more than 128
    completions, a request larger than the KV cache) cannot happen with before_call's bounds and the
    harness's cache."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return
    error = response.json().get("error") or {}
    if error.get("code") != "context_length_exceeded":
        raise AssertionError(f"Schema-valid request refused: {error}")
