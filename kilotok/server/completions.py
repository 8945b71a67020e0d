"""POST /v1/completions: plain-text (or token-id) prompts, one or several per request."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from kilotok.server.delivery import client_gone, collect, stream_events, usage_of
from kilotok.server.errors import bad_request
from kilotok.server.params import check_choice_count, check_context, reject_unsupported, sampling_params
from kilotok.server.protocol import CompletionRequest
from kilotok.server.responses import CompletionChoice, CompletionResponse, StreamChunks, new_id
from kilotok.server.state import ServerState


def prompt_token_lists(prompt: str | list, state: ServerState) -> list[list[int]]:
    """OpenAI's four prompt forms: a string, strings, token ids, lists of token ids."""
    if isinstance(prompt, str):
        return [state.engine.tokenizer.encode(prompt)]
    if not prompt:
        raise bad_request("prompt is empty: send a string or a list of strings or token ids", param="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [list(prompt)]
    if all(isinstance(item, str) for item in prompt):
        return [state.engine.tokenizer.encode(text) for text in prompt]
    return [list(ids) for ids in prompt]


class CompletionChunks(StreamChunks):
    chunk_type = CompletionResponse

    def opening(self, index: int) -> None:
        return None

    def delta(self, index: int, text: str, finish_reason: str | None) -> BaseModel:
        return self._chunk([CompletionChoice(index=index, text=text, finish_reason=finish_reason)])


async def create_completion(body: CompletionRequest, request: Request, state: ServerState):
    state.check_model(body.model)
    reject_unsupported(body)
    prompts = prompt_token_lists(body.prompt, state)
    check_choice_count(len(prompts), body.n)
    max_model_len = state.engine.max_model_len
    # Choice index = prompt index * n + choice within the prompt, as OpenAI numbers them.
    requests = []
    for ids in prompts:
        check_context(len(ids), body.max_tokens, max_model_len, param="prompt")
        choices = sampling_params(body, body.max_tokens or state.default_max_tokens(len(ids)))
        state.validate_prompt(ids, choices[0], param="prompt")
        requests += [(ids, params) for params in choices]
    prompt_tokens = sum(len(ids) for ids in prompts)
    request_id = new_id("cmpl")

    def submit():
        return state.async_engine.generate(requests)

    if body.stream:
        events = stream_events(request, submit, len(requests), CompletionChunks(request_id, state.served_model_name),
                               prompt_tokens, body.include_usage_in_stream)
        return StreamingResponse(events, media_type="text/event-stream")
    outputs = await collect(request, submit, len(requests))
    if outputs is None:
        return client_gone()
    choices = [CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason) for i, o in enumerate(outputs)]
    return CompletionResponse(id=request_id, model=state.served_model_name, choices=choices,
                              usage=usage_of(outputs, prompt_tokens))
