"""The two generation endpoints through the official openai client: text completions (streaming, stop
strings, n, several prompts) and chat completions (the chat template, streaming and usage)."""

from __future__ import annotations

import pytest

from tests.server.harness import MODEL

pytestmark = pytest.mark.slow

PROMPT = "The three primary colours are"


def complete(client, **settings):
    return client.completions.create(model=MODEL, prompt=settings.pop("prompt", PROMPT), **settings)


def test_completion_counts_prompt_tokens_like_the_hf_tokenizer(client, hf_reference_tokenizer):
    answer = complete(client, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert answer.usage.prompt_tokens == len(hf_reference_tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    assert answer.usage.completion_tokens == 6
    assert answer.choices[0].finish_reason == "length"
    assert answer.object == "text_completion" and answer.model == MODEL


def test_streamed_completion_equals_the_plain_one(client):
    plain = complete(client, max_tokens=10, temperature=0)
    chunks = list(complete(client, max_tokens=10, temperature=0, stream=True,
                           stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_stop_string_cuts_the_text_where_it_first_appears(client):
    """Oracle: the same greedy answer without the stop string, cut with str.find."""
    full = complete(client, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]
    expected = full[: full.find(stop)]

    plain = complete(client, max_tokens=24, temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    streamed = complete(client, max_tokens=24, temperature=0, stop=stop, stream=True,
                        extra_body={"ignore_eos": True})
    assert plain.choices[0].text == expected
    assert plain.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_n_returns_distinct_choices_seeded_per_choice(client):
    """Choice i samples with seed + i: choice 0 is the n=1 answer for the seed, choice 1 the n=1 answer for
    seed + 1."""
    settings = {"max_tokens": 8, "temperature": 1.0, "extra_body": {"ignore_eos": True}}
    both = complete(client, n=2, seed=11, **settings)
    first = complete(client, n=1, seed=11, **settings)
    second = complete(client, n=1, seed=12, **settings)
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [first.choices[0].text, second.choices[0].text]
    assert both.usage.completion_tokens == 16
    assert both.usage.prompt_tokens == first.usage.prompt_tokens


def test_streamed_n_2_interleaves_choices_by_index(client):
    plain = complete(client, n=2, max_tokens=6, temperature=0)
    chunks = list(complete(client, n=2, max_tokens=6, temperature=0, stream=True))
    texts = ["".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in range(2)]
    assert texts == [choice.text for choice in plain.choices]


def test_several_prompts_in_one_request_match_separate_requests(client):
    prompts = [PROMPT, "Water boils at"]
    together = complete(client, prompt=prompts, max_tokens=6, temperature=0)
    alone = [complete(client, prompt=p, max_tokens=6, temperature=0).choices[0].text for p in prompts]
    assert [c.text for c in together.choices] == alone


MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a colour of the sky."},
]


def hf_prompt_ids(hf_reference_tokenizer, messages: list[dict]) -> list[int]:
    text = hf_reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return hf_reference_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chat_applies_the_models_chat_template(client, hf_reference_tokenizer):
    """The chat endpoint renders the template itself; sending transformers' rendering of the same messages
    as token ids to the completions endpoint must give the same prompt length and the same greedy text."""
    oracle_ids = hf_prompt_ids(hf_reference_tokenizer, MESSAGES)
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    completion = client.completions.create(model=MODEL, prompt=oracle_ids, max_tokens=12, temperature=0)

    assert chat.usage.prompt_tokens == len(oracle_ids)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == completion.choices[0].text
    assert chat.choices[0].finish_reason == completion.choices[0].finish_reason
    assert chat.usage.completion_tokens == completion.usage.completion_tokens
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


def test_streamed_chat_matches_the_plain_answer_and_reports_usage(client):
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_sends_no_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0, stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


def test_max_completion_tokens_caps_the_answer(client):
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=5, temperature=0,
                                            extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 5
    assert answer.choices[0].finish_reason == "length"


def test_text_content_parts_equal_a_plain_string(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name a colour"},
                                          {"type": "text", "text": "of the sky."}]}]
    joined = [{"role": "user", "content": "Name a colour\nof the sky."}]
    from_parts = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=6, temperature=0)
    from_string = client.chat.completions.create(model=MODEL, messages=joined, max_tokens=6, temperature=0)
    assert from_parts.usage.prompt_tokens == from_string.usage.prompt_tokens
    assert from_parts.choices[0].message.content == from_string.choices[0].message.content


def test_models_lists_the_served_name(client, served):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["max_model_len"] == served.engine.max_model_len
