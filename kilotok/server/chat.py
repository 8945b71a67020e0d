"""POST /v1/chat/completions: the model's chat template applied to the messages, then generation."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from kilotok.errors import InvalidRequestError
from kilotok.server.delivery import client_gone, collect, stream_events, usage_of
from kilotok.server.errors import bad_request
from kilotok.server.params import check_context, reject_unsupported, sampling_params
from kilotok.server.protocol import ChatCompletionRequest, ChatMessage
from kilotok.server.responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    DeltaMessage,
    StreamChunks,
    new_id,
)
from kilotok.server.state import ServerState


def message_dict(message: ChatMessage, position: int) -> dict:
    """The plain {"role", "content"} form chat templates read; text parts are joined by newlines."""
    content = message.content
    if isinstance(content, list):
        if any(part.type != "text" or part.text is None for part in content):
            raise bad_request("only text content parts are supported", param=f"messages.{position}.content")
        content = "\n".join(part.text for part in content)
    return {"role": message.role, "content": content or ""}


class ChatChunks(StreamChunks):
    chunk_type = ChatCompletionChunk

    def opening(self, index: int) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])

    def delta(self, index: int, text: str, finish_reason: str | None) -> BaseModel:
        delta = DeltaMessage(content=text or None)
        return self._chunk([ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason)])


async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: ServerState):
    state.check_model(body.model)
    reject_unsupported(body)
    messages = [message_dict(message, position) for position, message in enumerate(body.messages)]
    try:
        prompt_ids = state.engine.tokenizer.encode_chat(messages)
    except InvalidRequestError as error:
        raise bad_request(str(error), param="messages") from None
    max_model_len = state.engine.max_model_len
    check_context(len(prompt_ids), body.output_limit, max_model_len, param="messages")
    max_tokens = body.output_limit or state.default_max_tokens(len(prompt_ids))
    params = sampling_params(body, max_tokens)
    state.validate_prompt(prompt_ids, params[0], param="messages")
    request_id = new_id("chatcmpl")

    def submit():
        return state.async_engine.generate([(prompt_ids, p) for p in params])

    if body.stream:
        events = stream_events(request, submit, body.n, ChatChunks(request_id, state.served_model_name),
                               len(prompt_ids), body.include_usage_in_stream)
        return StreamingResponse(events, media_type="text/event-stream")
    outputs = await collect(request, submit, body.n)
    if outputs is None:
        return client_gone()
    choices = [ChatChoice(index=i, message=AssistantMessage(content=o.text), finish_reason=o.finish_reason)
               for i, o in enumerate(outputs)]
    return ChatCompletionResponse(id=request_id, model=state.served_model_name, choices=choices,
                                  usage=usage_of(outputs, len(prompt_ids)))
