"""The fixed chat prompts that `kilotok bench latency` runs, written for kilotok.

They vary in length (one line to a long paragraph, so prefill is measured on more than one size) and in
kind (explanation, code, lists, rewriting, multi-turn). They are deliberately not taken from MT-bench,
HumanEval or GSM8K: those stay reserved for independent evaluation. Each asks for a long answer so that
greedy decoding rarely wants to stop early.
"""

from __future__ import annotations

from kilotok.errors import InvalidRequestError

Message = dict[str, str]

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
