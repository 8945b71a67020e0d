"""Chat prompts equal transformers' apply_chat_template, for the default model's template and for templates
using the helpers HF provides; bad messages and missing templates fail with a clear error."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from kilotok.errors import InvalidRequestError, ModelFormatError
from kilotok.tokenizer.chat_template import ChatTemplate
from kilotok.tokenizer.gguf_vocab import tokenizer_from_gguf
from kilotok.tokenizer.tokenizer import Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Write a haiku about the sea."},
        {"role": "assistant", "content": "Waves fold into foam,\nsalt wind, gull cries,\ntide forgets."},
        {"role": "user", "content": "Now one about mountains, in 日本語 🗻."},
    ],
    [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": 'Give {"a": 1} back.'},
        {"role": "assistant", "content": '{"a": 1}'},
        {"role": "user", "content": "  and with   spaces\n\n\tand tabs  "},
    ],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def tokenizer(default_gguf_path: Path) -> Tokenizer:
    return tokenizer_from_gguf(gguf.GGUFReader(default_gguf_path))


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_chat_text_and_ids_match_reference(tokenizer, hf_reference_tokenizer, messages,
                                           add_generation_prompt):
    reference = hf_reference_tokenizer.apply_chat_template
    prompt = {"add_generation_prompt": add_generation_prompt}
    assert tokenizer.apply_chat_template(messages, **prompt) == reference(messages, tokenize=False, **prompt)
    reference_ids = reference(messages, tokenize=True, **prompt)["input_ids"]
    assert tokenizer.encode_chat(messages, **prompt) == reference_ids


@pytest.mark.slow
def test_default_system_message_only_when_none_given(tokenizer):
    without = tokenizer.apply_chat_template(CONVERSATIONS[0])
    with_system = tokenizer.apply_chat_template(CONVERSATIONS[1])
    assert "SmolLM" in without and "SmolLM" not in with_system


# Exercises what HF templates rely on: trim_blocks/lstrip_blocks, loop controls, namespace, tojson without
# HTML escaping and with non-ASCII kept, the `generation` block, special-token variables, extra variables.
HELPER_TEMPLATE = """{{ bos_token }}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if message.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.turns = ns.turns + 1 %}
    <{{ message.role }}>{{ message.content | tojson }}</{{ message.role }}>
    {% if message.role == 'assistant' %}
        {% generation %}{{ message.content | trim }}{% endgeneration %}
    {% endif %}
    {% if loop.index > 3 %}{% break %}{% endif %}
{% endfor %}
turns={{ ns.turns }} tools={{ tools | tojson }}{{ eos_token if add_generation_prompt else '' }}
"""


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_helpers_render_like_transformers(add_generation_prompt):
    messages = [
        {"role": "user", "content": "<b>&'quotes'</b> é 漢"},
        {"role": "skip", "content": "hidden"},
        {"role": "assistant", "content": "  padded  "},
        {"role": "user", "content": "one"},
        {"role": "user", "content": "never shown"},
    ]
    tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    tools = [{"name": "search", "description": "finds <things>"}]
    ours = ChatTemplate(HELPER_TEMPLATE, tokens).render(messages, add_generation_prompt, tools=tools)
    (reference,), _ = render_jinja_template([messages], chat_template=HELPER_TEMPLATE, tools=tools,
                                            add_generation_prompt=add_generation_prompt, **tokens)
    assert ours == reference
    assert "never shown" not in ours and "&amp;" not in ours


def test_strftime_now_is_available():
    rendered = ChatTemplate("{{ strftime_now('%Y') }}", {}).render([{"role": "user", "content": "x"}])
    assert rendered.isdigit() and len(rendered) == 4


def test_raise_exception_becomes_invalid_request():
    template = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('must start with user') }}"
                            "{% endif %}ok", {})
    assert template.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(InvalidRequestError, match="must start with user"):
        template.render([{"role": "assistant", "content": "x"}])


def test_sandbox_blocks_python_internals():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(InvalidRequestError):
        template.render([{"role": "user", "content": "x"}])


def test_invalid_template_syntax_is_a_model_format_error():
    with pytest.raises(ModelFormatError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}", {})


@pytest.mark.parametrize(("messages", "complaint"), [
    ("hello", "must be a list"),
    ([], "empty"),
    (["hello"], r"messages\[0\] must be an object"),
    ([{"content": "hi"}], r"messages\[0\] has no 'role'"),
    ([{"role": "user"}], r"messages\[0\] has no 'content'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}],
     r"messages\[1\].content must be a string"),
    ([{"role": None, "content": "a"}], r"messages\[0\].role must be a string"),
])
def test_bad_messages_say_what_is_wrong(messages, complaint):
    with pytest.raises(InvalidRequestError, match=complaint):
        ChatTemplate("{{ messages }}", {}).render(messages)


def test_model_without_template_refuses_chat(tokenizer):
    bare = Tokenizer(tokenizer.backend, bos_token_id=None, eos_token_id=2, name="bare-model")
    with pytest.raises(InvalidRequestError, match="bare-model has no chat template"):
        bare.encode_chat([{"role": "user", "content": "hi"}])


def test_end_of_turn_tokens_in_template_stop_generation(tokenizer):
    """A model whose EOS is `<|endoftext|>` but whose template closes turns with `<|im_end|>`."""
    chatml = Tokenizer(tokenizer.backend, bos_token_id=None, eos_token_id=0,
                       chat_template=tokenizer.chat_template)
    assert chatml.eos_token_ids == (0, tokenizer.token_to_id("<|im_end|>"))
