"""The chat prompts the benchmarks send: kilotok's own fixed bench prompts, and prompt files.

The bench prompts (`kilotok bench latency`, warm-ups, spec-policy) are written for kilotok. They vary in
length (one line to a long paragraph, so prefill is measured on more than one size) and in kind
(explanation, code, lists, rewriting, multi-turn), and each asks for a long answer so that greedy decoding
rarely wants to stop early.

`kilotok bench serve` and `bench soak` send a prompt file, by default the held-out split of the default
model's self-distillation data (200 distinct ShareGPT first turns, never trained on by the shipped draft
head). Distinct prompts matter at high concurrency: repeating a handful would let the prefix cache answer
most of each prefill, and the benchmark would measure the cache instead of the server.

None of them is taken from MT-bench, HumanEval or GSM8K: those stay reserved for independent evaluation.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from kilotok.errors import InvalidRequestError

Message = dict[str, str]

HELD_OUT_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "smollm2-135m-distill" / "held_out.jsonl.gz"

_LONG_PASSAGE = (
    "The harbour town sat at the mouth of a cold river. Every spring the ice broke upstream and came "
    "down in grinding sheets, and for two weeks the fishing boats stayed tied up while the children "
    "raced along the sea wall to watch the floes spin past. The old lighthouse keeper kept a notebook "
    "of the dates the ice arrived, going back forty years, and he liked to say the river was getting "
    "impatient: the ice now came almost three weeks earlier than when he had started. The mayor wanted "
    "to turn the lighthouse into a museum, the fishermen wanted a new breakwater, and the keeper just "
    "wanted someone to take over the notebook."
)

BENCH_PROMPTS: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "Why is the sky blue during the day but red at sunset?"},),
    (
        {"role": "user", "content": "Write a Python function that merges two sorted lists into one "
         "sorted list without using sort(), and explain how it works."},
    ),
    (
        {"role": "system", "content": "You are a patient cooking teacher who explains every step."},
        {"role": "user", "content": "How do I make a simple tomato soup at home?"},
    ),
    ({"role": "user", "content": "Give me ten ideas for a rainy weekend with two young children."},),
    (
        {"role": "user", "content": f"{_LONG_PASSAGE}\n\nSummarise this story in a few sentences, then "
         "say what you think happens next."},
    ),
    (
        {"role": "user", "content": "What is a good way to start learning to play the guitar?"},
        {"role": "assistant", "content": "Start with a few open chords and practise switching between "
         "them slowly for ten minutes a day."},
        {"role": "user", "content": "Which chords first, and how long until I can play a whole song?"},
    ),
    ({"role": "user", "content": "Explain to a new programmer what a hash table is and when to use one."},),
    (
        {"role": "user", "content": "Rewrite this note to sound polite and professional: 'the report "
         "is late again, you said friday, I need it now or we lose the client.' Then explain what you "
         "changed and why."},
    ),
)


def bench_prompts(count: int | None = None) -> list[list[Message]]:
    """The first `count` prompts (all of them when None), each a fresh list of message dicts."""
    if count is not None and not 1 <= count <= len(BENCH_PROMPTS):
        raise InvalidRequestError(
            f"--num-prompts must be between 1 and {len(BENCH_PROMPTS)}, got {count}"
        )
    chosen = BENCH_PROMPTS if count is None else BENCH_PROMPTS[:count]
    return [[dict(message) for message in conversation] for conversation in chosen]


def cycled_bench_prompts(count: int) -> list[list[Message]]:
    """`count` bench prompts, going round the set as often as it takes."""
    return [[dict(message) for message in BENCH_PROMPTS[index % len(BENCH_PROMPTS)]] for index in range(count)]


def _conversation(record: object, where: str) -> list[Message]:
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return [{"role": "user", "content": record["prompt"]}]
    if isinstance(record, dict) and isinstance(record.get("messages"), list) and record["messages"]:
        return [dict(message) for message in record["messages"]]
    raise InvalidRequestError(f"{where}: expected an object with \"prompt\" (a string) or \"messages\" (a list)")


def load_chat_prompts(path: Path = HELD_OUT_PROMPTS) -> list[list[Message]]:
    """Conversations from a JSONL file (gzipped when its name ends in .gz), one per line."""
    if not path.is_file():
        raise InvalidRequestError(
            f"prompt file {path} not found; pass --prompts-file with a JSONL file of "
            "{\"prompt\": ...} or {\"messages\": [...]} lines"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    conversations = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidRequestError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            conversations.append(_conversation(record, f"{path}:{number}"))
    if not conversations:
        raise InvalidRequestError(f"{path} holds no prompts")
    return conversations


class PromptCursor:
    """Hands out prompts in file order across all levels, so no level repeats another's prompts until the
    file runs out (then it starts over, and the prefix cache may shorten those prefills)."""

    def __init__(self, conversations: list[list[Message]]) -> None:
        self._conversations = conversations
        self._next = 0
        self.wrapped = False

    def take(self, count: int) -> list[list[Message]]:
        taken = []
        for _ in range(count):
            if self._next == len(self._conversations):
                self._next = 0
                self.wrapped = True
            taken.append(self._conversations[self._next])
            self._next += 1
        return taken
