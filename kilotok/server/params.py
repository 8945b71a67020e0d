"""Turns an OpenAI request into kilotok SamplingParams, one per choice, and checks that the prompt fits
the context window. Everything here runs before a request reaches the engine, so a bad request is a 400
and never touches a running batch."""

from __future__ import annotations

from kilotok.errors import InvalidRequestError
from kilotok.sampling_params import SamplingParams
from kilotok.server.errors import bad_request
from kilotok.server.protocol import MAX_CHOICES, ChatCompletionRequest, CompletionRequest, SamplingRequest

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def reject_unsupported(request: SamplingRequest) -> None:
    """Fields kilotok cannot honour get a clear 400 instead of being silently ignored."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name) not in (None, 0):
            raise bad_request(f"{name} is not supported by kilotok: leave it unset or 0", param=name)
    if request.logit_bias:
        raise bad_request("logit_bias is not supported by kilotok: leave it unset", param="logit_bias")
    if isinstance(request, CompletionRequest):
        _reject_completion_only(request)
    if isinstance(request, ChatCompletionRequest):
        _reject_chat_only(request)


def _reject_completion_only(request: CompletionRequest) -> None:
    if request.logprobs is not None:
        raise bad_request("logprobs is not supported by kilotok yet: leave it unset", param="logprobs")
    if request.echo:
        raise bad_request("echo is not supported by kilotok: leave it false", param="echo")
    if request.suffix:
        raise bad_request("suffix (insertion) is not supported by kilotok: leave it unset", param="suffix")
    if request.best_of not in (None, request.n):
        raise bad_request("best_of is not supported by kilotok: leave it unset or equal to n", param="best_of")


def _reject_chat_only(request: ChatCompletionRequest) -> None:
    if request.logprobs or request.top_logprobs:
        raise bad_request("logprobs is not supported by kilotok yet: leave it unset or false", param="logprobs")
    if request.tools or request.tool_choice not in (None, "none"):
        raise bad_request("tool calling is not supported by kilotok: send no tools", param="tools")
    if request.response_format and request.response_format.get("type") not in (None, "text"):
        raise bad_request("structured output is not supported by kilotok: use response_format text",
                          param="response_format")


def check_context(prompt_len: int, max_tokens: int | None, max_model_len: int, param: str) -> None:
    limit = max_model_len
    if prompt_len >= limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens, but the prompt has {prompt_len} tokens, "
            "leaving no room for output: shorten the prompt.", param=param, code=CONTEXT_LENGTH_EXCEEDED)
    if max_tokens is not None and prompt_len + max_tokens > limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens; the request asks for {prompt_len + max_tokens}"
            f" ({prompt_len} in the prompt, {max_tokens} to generate): lower max_tokens or shorten the prompt.",
            param="max_tokens", code=CONTEXT_LENGTH_EXCEEDED)


def check_choice_count(num_prompts: int, n: int) -> None:
    if num_prompts * n > MAX_CHOICES:
        raise bad_request(f"{num_prompts} prompts times n={n} asks for more than {MAX_CHOICES} completions: "
                          "split the request", param="n")


def sampling_params(request: SamplingRequest, max_tokens: int) -> list[SamplingParams]:
    """One SamplingParams per choice. Choice i samples with seed + i, so choice 0 matches the same request
    with n=1 and the choices differ from one another."""
    params = []
    for choice in range(request.n):
        seed = None if request.seed is None else request.seed + choice
        try:
            params.append(SamplingParams(
                temperature=1.0 if request.temperature is None else request.temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                top_k=request.top_k or 0,
                min_p=request.min_p or 0.0,
                seed=seed,
                max_tokens=max_tokens,
                stop=request.stop or None,
                stop_token_ids=request.stop_token_ids,
                ignore_eos=request.ignore_eos,
                include_stop_str_in_output=request.include_stop_str_in_output,
                speculate=request.speculate,
            ))
        except InvalidRequestError as error:
            raise bad_request(str(error)) from None
    return params
