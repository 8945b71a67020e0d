"""Rendering a model's Jinja chat template the way Hugging Face does, so prompts match the model's training.

Templates come from model files we did not write, so they run in Jinja's immutable sandbox. The environment
mirrors transformers' (`trim_blocks`, `lstrip_blocks`, `loopcontrols`, a `tojson` that does not escape HTML,
`raise_exception`, `strftime_now`): a template that renders differently here would silently change the
prompt the model sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kilotok.errors import InvalidRequestError, ModelFormatError


class _GenerationBlock(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}`, which HF templates use to mark assistant text for
    training masks; for inference the block simply renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: jinja2.runtime.Macro) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, > and & for HTML, which would change tool schemas inside prompts.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Check the conversation shape and return plain-dict copies, so the template never sees caller objects.

    Only `role` and `content` are required; other keys (`name`, `tool_calls`, ...) pass through to templates
    that use them.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise InvalidRequestError(
            "messages must be a list of {'role': str, 'content': str} objects, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidRequestError("messages is empty: send at least one {'role': 'user', 'content': ...}")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(
                f"messages[{index}] must be an object with 'role' and 'content', got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if key not in message:
                raise InvalidRequestError(f"messages[{index}] has no {key!r} field")
            if not isinstance(message[key], str):
                raise InvalidRequestError(
                    f"messages[{index}].{key} must be a string, got {type(message[key]).__name__}"
                )
        checked.append(dict(message))
    return checked


class ChatTemplate:
    """A compiled chat template, with the special-token variables (`bos_token`, ...) it may use. `origin`
    names where the template came from, for error messages."""

    def __init__(self, source: str, special_tokens: Mapping[str, str | None],
                 origin: str = "the model's chat template"):
        self._origin = origin
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ModelFormatError(
                f"{origin} is not valid Jinja (line {error.lineno}: {error.message}); fix the template there, "
                "or remove it to serve plain prompts only"
            ) from error
        self._special_tokens = dict(special_tokens)

    def render(self, messages: object, add_generation_prompt: bool = True, **variables: Any) -> str:
        """The prompt text for `messages`; `variables` (e.g. `tools`) reach the template as globals."""
        checked = validate_messages(messages)
        context = {"tools": None, "documents": None, **self._special_tokens, **variables}
        try:
            return self._template.render(
                messages=checked, add_generation_prompt=add_generation_prompt, **context
            )
        # The template is code from the model's files: any error it raises (its own raise_exception, an
        # undefined variable, a TypeError in an expression) is about these messages or the template, never
        # a kilotok bug, so it becomes a request error instead of a crash.
        except Exception as error:
            detail = str(error) if isinstance(error, jinja2.TemplateError) else f"{type(error).__name__}: {error}"
            raise InvalidRequestError(
                f"{self._origin} could not render these messages ({detail}); change the messages (many "
                "templates want e.g. alternating user and assistant turns) or fix the template"
            ) from error
