"""The benchmarks' prompts: the fixed bench prompts, and the prompt files `bench serve` and `bench soak` send
(the held-out split by default, or a JSONL file)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kilotok.bench.prompts import (
    BENCH_PROMPTS,
    HELD_OUT_PROMPTS,
    PromptCursor,
    bench_prompts,
    cycled_bench_prompts,
    load_chat_prompts,
)
from kilotok.errors import InvalidRequestError


def test_bench_prompts_are_chats_ending_with_a_user_turn():
    assert len(BENCH_PROMPTS) >= 8
    for conversation in bench_prompts():
        assert conversation[-1]["role"] == "user"
        assert all(m["role"] in {"system", "user", "assistant"} and m["content"] for m in conversation)
    assert len(bench_prompts(3)) == 3
    with pytest.raises(InvalidRequestError):
        bench_prompts(len(BENCH_PROMPTS) + 1)


def test_cycled_bench_prompts_go_round_the_set_as_fresh_copies():
    count = 2 * len(BENCH_PROMPTS) + 3
    cycled = cycled_bench_prompts(count)
    assert cycled == [bench_prompts()[index % len(BENCH_PROMPTS)] for index in range(count)]
    cycled[0][0]["content"] = "changed"
    assert cycled[len(BENCH_PROMPTS)][0]["content"] != "changed" and BENCH_PROMPTS[0][0]["content"] != "changed"



def test_default_prompts_are_the_held_out_first_turns_in_file_order():
    with gzip.open(HELD_OUT_PROMPTS, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    assert all(record["held_out"] for record in records)
    assert load_chat_prompts() == [[{"role": "user", "content": record["prompt"]}] for record in records]


def test_plain_jsonl_takes_prompts_and_message_lists(tmp_path: Path):
    path = tmp_path / "prompts.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path.write_text(json.dumps({"prompt": "Hello"}) + "\n\n" + json.dumps({"messages": messages}) + "\n")
    assert load_chat_prompts(path) == [[{"role": "user", "content": "Hello"}], messages]


@pytest.mark.parametrize(("text", "message"), [
    ("{not json\n", r"prompts.jsonl:1: not valid JSON"),
    ('{"text": "hi"}\n', r"prompts.jsonl:1: expected an object with \"prompt\""),
    ("\n", "holds no prompts"),
])
def test_bad_prompt_files_are_clear_errors(tmp_path: Path, text: str, message: str):
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(InvalidRequestError, match=message):
        load_chat_prompts(path)


def test_cursor_continues_across_levels_and_wraps_when_the_file_runs_out():
    cursor = PromptCursor([[{"role": "user", "content": str(number)}] for number in range(3)])
    first, second = cursor.take(2), cursor.take(3)
    assert [conversation[0]["content"] for conversation in first + second] == ["0", "1", "2", "0", "1"]
    assert cursor.wrapped
