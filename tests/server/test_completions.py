"""Text completions through the official openai client: streaming, stop strings, n, several prompts."""

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
