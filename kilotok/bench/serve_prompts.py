"""The chat prompts `kilotok bench serve` sends: by default the held-out split of the default model's
self-distillation data (200 distinct ShareGPT first turns, never trained on by the shipped draft head).

Distinct prompts matter at high concurrency: repeating a handful would let the prefix cache answer most
of each prefill, and the benchmark would measure the cache instead of the server. MT-bench, HumanEval and
GSM8K stay reserved for independent evaluation and are never used here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from kilotok.bench.prompts import Message
from kilotok.errors import InvalidRequestError

HELD_OUT_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "smollm2-135m-distill" / "held_out.jsonl.gz"


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
