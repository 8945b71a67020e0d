"""The OpenAI wire format: the request bodies kilotok accepts, and the bodies, stream chunks and errors it
sends. A request body's JSON schema is the contract: types are strict (no "1" or true for 1), every range
the server enforces is a constraint, and fields kilotok cannot honour accept only the values that ask for
nothing, so a request the schema allows is never refused for its form and one it forbids is a 400 that
names the field. Unknown fields are ignored, as OpenAI-compatible servers do. What no schema can say (a
prompt's length in tokens against the context window, the number of prompts times `n`) is checked by
`endpoints.py`."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

MAX_CHOICES = 128
"""Most completions one request may ask for (`n` times the number of prompts)."""


def _integral(value: Any) -> Any:
    # JSON Schema counts 2.0 as an integer; strict pydantic alone would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds: int) -> Any:
    """An integer within `bounds` (ge, le). The bounds come before the validator, so they reach the JSON
    schema as `minimum` and `maximum`."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


def _unicode(value: str) -> str:
    # JSON can escape an unpaired surrogate ("\ud800"), which is no character: the tokenizer cannot take it,
    # and no answer could quote it back.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise PydanticCustomError("string_unicode", "not valid Unicode: it holds an unpaired surrogate") from None
    return value


Integer = integer()
TokenId = integer(ge=0)
Unicode = Annotated[str, AfterValidator(_unicode)]
Text = Annotated[Unicode, Field(min_length=1)]


def unsupported(kind: Any, *off: Any, advice: str) -> Any:
    """A field kilotok cannot honour: it parses as OpenAI types it, but only the values that ask for nothing
    (`off`, and null) pass, and the schema lists exactly those, so clients that send the neutral value
    keep working and any other value is a 400 that says what to do."""
    accepted = (None, *off)

    def check(value: Any) -> Any:
        if value not in accepted:
            raise PydanticCustomError("unsupported", "not supported by kilotok: {advice}", {"advice": advice})
        return value

    schema = {"enum": list(accepted), "description": f"Not supported by kilotok: {advice}."}
    return Annotated[kind | None, AfterValidator(check), WithJsonSchema(schema)]


def _one_or_list(value: Any) -> str:
    return "list" if isinstance(value, list) else "one"


def one_or_list(one: Any, many: Any) -> Any:
    """A value or a list of values. The JSON shape picks the member, so an error names the position
    that is wrong instead of listing why the value is not each of the members."""
    return Annotated[Annotated[one, Tag("one")] | Annotated[many, Tag("list")], Discriminator(_one_or_list)]


def _prompt_form(value: Any) -> str:
    if not isinstance(value, list):
        return "text"
    first = value[0] if value else None
    return "texts" if isinstance(first, str) else "token id lists" if isinstance(first, list) else "token ids"


Prompt = Annotated[
    Annotated[Text, Tag("text")]
    | Annotated[list[Text], Field(min_length=1, max_length=MAX_CHOICES), Tag("texts")]
    | Annotated[list[TokenId], Field(min_length=1), Tag("token ids")]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES),
                Tag("token id lists")],
    Discriminator(_prompt_form),
]
"""OpenAI's four prompt forms: a string, strings, token ids, lists of token ids (never empty)."""


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(Body):
    include_usage: bool = False


class SamplingRequest(Body):
    """Fields that completions and chat completions share."""

    model: Unicode | None = None
    max_tokens: integer(ge=1) | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: integer(ge=1, le=MAX_CHOICES) = 1
    # Any integer: endpoints.py wraps it into the range torch takes.
    seed: Integer | None = None
    stop: one_or_list(Text, list[Text]) | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: unsupported(float, 0, advice="leave it unset or 0") = None
    frequency_penalty: unsupported(float, 0, advice="leave it unset or 0") = None
    logit_bias: unsupported(dict[str, float], {}, advice="leave it unset") = None
    user: Unicode | None = None
    # Extensions that vLLM also accepts.
    top_k: integer(ge=-1) | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    # kilotok's own: let the server's speculative decoding draft for this request (the output is the same).
    speculate: bool = True

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def output_limit(self) -> int | None:
        return self.max_tokens


class CompletionRequest(SamplingRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "The three primary colours are",
                                                               "max_tokens": 16}]})

    prompt: Prompt
    echo: unsupported(bool, False, advice="leave it unset or false") = None
    logprobs: unsupported(Integer, advice="leave it unset") = None
    suffix: unsupported(str, "", advice="leave it unset") = None
    best_of: unsupported(Integer, 1, advice="leave it unset or 1: kilotok does not rank candidates") = None


class TextContentPart(Body):
    type: Literal["text"]
    text: Unicode


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: one_or_list(Unicode, list[TextContentPart]) | None = None
    name: Unicode | None = None


class ChatCompletionRequest(SamplingRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "messages": [{"role": "user", "content": "Name three rivers."}], "max_tokens": 32, "stream": True}]})

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: integer(ge=1) | None = None
    logprobs: unsupported(bool, False, advice="leave it unset or false") = None
    top_logprobs: unsupported(Integer, 0, advice="leave it unset or 0") = None
    tools: unsupported(list[Any], [], advice="send no tools") = None
    tool_choice: unsupported(Any, "none", advice="leave it unset or 'none'") = None
    response_format: unsupported(dict[str, Any], {"type": "text"}, advice="leave it unset or {'type': 'text'}") = None

    @property
    def output_limit(self) -> int | None:
        """`max_completion_tokens` replaced `max_tokens` in OpenAI's API; either is honoured."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_unix() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now_unix)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now_unix)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now_unix)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now_unix)
    owned_by: str = "kilotok"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body, the one shape of every failure the server answers."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "engine stopped"]
