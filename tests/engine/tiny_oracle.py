"""Greedy continuations and logits straight from transformers' model, the oracle of the scheduler
tests, and spies that record what the engine ran."""

from __future__ import annotations

import torch

from kilotok import SamplingParams


@torch.no_grad()
def greedy_with_logits(reference, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], torch.Tensor]:
    """The greedy continuation of `prompt_ids` and the logits the first token was picked from, from
    full (uncached) forwards of the reference model."""
    ids = list(prompt_ids)
    first_logits = None
    for _ in range(max_tokens):
        logits = reference(torch.tensor([ids])).logits[0, -1]
        first_logits = logits if first_logits is None else first_logits
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):], first_logits


def random_prompt(length: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def record_calls(monkeypatch, owner, name: str) -> list:
    """Wrap owner.name so every call's positional arguments and result are appended to the returned list."""
    calls = []
    original = getattr(owner, name)

    def recorded(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(owner, name, recorded)
    return calls


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
