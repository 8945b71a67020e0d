"""Batched token sampling with per-row parameters that never waits on the device.

Every decision that depends on tensor values happens on the device (masks, `torch.where`, gathers), and
every Python branch depends only on the requests' parameters, so a step queues its kernels and returns
without synchronising, and `processed_probs` and `race` trace under `torch.compile(fullgraph=True)`
(`exponential_noise` stays eager: dynamo cannot trace explicit per-sequence generators).

Order of the filters (the order of vLLM's original sampler): temperature, then top-k, then top-p on the
renormalised top-k distribution, then min-p. Min-p is relative to the most likely token, which every
filter keeps, so it removes the same tokens whether it runs before or after renormalising.

Ties: every filter compares values against a cutoff value, never positions in a sorted list, so tokens
with equal logits are always kept or dropped together and the result does not depend on token ids or on
how a sort orders equal keys. Top-k therefore keeps more than k tokens when several tie at the k-th
largest logit; top-p keeps all tokens tied with the last one it needs. Greedy picks the lowest token id
among equal maxima (`torch.argmax`'s documented rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kilotok.kernels.argmax import argmax_rows
from kilotok.kernels.backend import KernelBackend
from kilotok.sampling_params import SamplingParams


@dataclass
class SamplingTensors:
    """One batch's sampling parameters on the device, plus Python flags that let a step skip unused filters.

    Greedy rows carry temperature 1 (so nothing divides by zero); their probabilities are replaced by a
    one-hot at the argmax. Disabled filters carry neutral values: top_k 0, top_p 1, min_p 0.
    """

    temperatures: torch.Tensor  # [B] fp32
    top_k: torch.Tensor  # [B] int64, 0 = off
    top_p: torch.Tensor  # [B] fp32
    min_p: torch.Tensor  # [B] fp32
    greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    any_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_min_p: bool
    max_top_k: int  # largest enabled top_k, so top-k needs a partial `topk` rather than a full sort

    @classmethod
    def from_params(cls, params: Sequence[SamplingParams], device: torch.device | str) -> SamplingTensors:
        device = torch.device(device)
        greedy = [p.greedy for p in params]
        top_k = [p.top_k if p.top_k_enabled and not p.greedy else 0 for p in params]
        sampled = [p for p in params if not p.greedy]
        temperatures = [1.0 if p.greedy else p.temperature for p in params]
        return cls(
            temperatures=_to_device(temperatures, torch.float32, device),
            top_k=_to_device(top_k, torch.int64, device),
            top_p=_to_device([p.top_p for p in params], torch.float32, device),
            min_p=_to_device([p.min_p for p in params], torch.float32, device),
            greedy=_to_device(greedy, torch.bool, device),
            all_greedy=all(greedy),
            any_greedy=any(greedy),
            any_top_k=any(top_k),
            any_top_p=any(p.top_p < 1 for p in sampled),
            any_min_p=any(p.min_p > 0 for p in sampled),
            max_top_k=max(top_k, default=0),
        )


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # A copy from pinned memory is asynchronous; from pageable memory CUDA would block the host.
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """The private random stream of one sequence: create once per request, reuse every step."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def processed_probs(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """The exact distribution [B, V] (fp32) each row's next token is drawn from, after every filter.

    Speculative decoding's rejection sampling relies on this being the true target distribution.
    """
    logits = logits.float()
    if t.all_greedy:
        return _one_hot_argmax(logits)
    # Subtracting the row maximum first keeps tiny temperatures from overflowing to inf.
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / t.temperatures.unsqueeze(-1)
    if t.any_top_k:
        scaled = _mask_below_top_k(scaled, t.top_k, t.max_top_k)
    probs = scaled.softmax(dim=-1)
    if t.any_top_p:
        probs = _keep_top_p(probs, t.top_p)
    if t.any_min_p:
        probs = _keep_min_p(probs, t.min_p)
    if t.any_greedy:
        probs = torch.where(t.greedy.unsqueeze(-1), _one_hot_argmax(logits), probs)
    return probs


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    hot = torch.zeros_like(logits, dtype=torch.float32)
    return hot.scatter_(-1, argmax_rows(logits)[..., None], 1.0)


def _mask_below_top_k(scaled: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    vocab = scaled.shape[-1]
    widest = min(max_top_k, vocab)
    largest = scaled.topk(widest, dim=-1).values  # [B, widest], descending
    kth_index = (top_k.clamp(min=1, max=widest) - 1).unsqueeze(-1)
    cutoff = largest.gather(-1, kth_index)
    cutoff = torch.where((top_k > 0).unsqueeze(-1), cutoff, float("-inf"))
    return scaled.masked_fill(scaled < cutoff, float("-inf"))


def _keep_top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the most likely tokens until their mass reaches top_p: a token stays when the mass ranked
    strictly above it is below top_p (so the most likely token always stays)."""
    ranked = probs.sort(dim=-1, descending=True).values
    mass_above = ranked.cumsum(dim=-1) - ranked
    kept = (mass_above < top_p.unsqueeze(-1)).sum(dim=-1, keepdim=True)
    cutoff = ranked.gather(-1, kept.clamp(min=1) - 1)
    # With top_p = 1 rounding in the cumulative sum could still cut the tail; nothing may go.
    cutoff = torch.where(top_p.unsqueeze(-1) >= 1, 0.0, cutoff)
    return _renormalised(probs.masked_fill(probs < cutoff, 0.0))


def _keep_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    cutoff = min_p.unsqueeze(-1) * probs.amax(dim=-1, keepdim=True)
    return _renormalised(probs.masked_fill(probs < cutoff, 0.0))


def _renormalised(probs: torch.Tensor) -> torch.Tensor:
    return probs / probs.sum(dim=-1, keepdim=True)


def sample(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Draw one token per row from `probs` [B, V] without a host sync; returns int64 [B]."""
    return race(probs, exponential_noise(probs.shape, generators, probs.device))


def exponential_noise(
    shape: torch.Size | tuple[int, int], generators: Sequence[torch.Generator | None], device: torch.device
) -> torch.Tensor:
    """Exp(1) noise [B, V] for `race`. A row with a generator draws only from it, so a seeded sequence
    gets the same tokens whatever else is in the batch; rows without one use the global RNG.

    Kept apart from `race` because torch.compile cannot trace explicit generators: compile `race` and
    `processed_probs`, and call this eagerly.
    """
    return _row_noise(torch.empty(shape, dtype=torch.float32, device=device), generators, torch.Tensor.exponential_)


def uniform_noise(shape: torch.Size | tuple[int, int], generators: Sequence[torch.Generator | None],
                  device: torch.device) -> torch.Tensor:
    """U[0, 1) noise [B, N] in float64, each row drawn as `exponential_noise` draws its rows."""
    return _row_noise(torch.empty(shape, dtype=torch.float64, device=device), generators, torch.Tensor.uniform_)


def _row_noise(noise: torch.Tensor, generators: Sequence[torch.Generator | None],
               draw: Callable[..., torch.Tensor]) -> torch.Tensor:
    if len(generators) != noise.shape[0]:
        raise ValueError(f"got {len(generators)} generators for {noise.shape[0]} rows; pass one per row (or None)")
    draw(noise)
    for row, generator in enumerate(generators):
        if generator is not None:
            draw(noise[row], generator=generator)
    return noise


def race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Exponential race: argmax(p_i / E_i) with E_i ~ Exp(1) independent picks token i with probability
    p_i, because E_i / p_i ~ Exp(p_i) and the smallest of independent exponentials is i with probability
    p_i / sum(p). Unlike torch.multinomial it needs no host sync."""
    # A zero draw would turn a zero-probability token into 0/0 = NaN, which argmax would pick.
    noise = noise.clamp(min=torch.finfo(torch.float32).tiny)
    return argmax_rows(probs.float() / noise)


class Sampler:
    """logits [B, V] -> next tokens [B] (int64), one SamplingTensors and one generator per row.

    With the Triton backend the filters and the race run as one kernel per row (kernels/triton/sampling.py)
    on the same noise, so seeded requests draw the same tokens as with the reference. An all-greedy batch
    stays one argmax with either backend (kernels/argmax.py; on a GPU, `torch.argmax`'s single kernel)."""

    def __init__(self, backend: KernelBackend = KernelBackend.TORCH) -> None:
        self.backend = backend

    def for_requests(self, logits: torch.Tensor, params: Sequence[SamplingParams],
                     generators: Sequence[torch.Generator | None]) -> torch.Tensor:
        """`self(logits, SamplingTensors.from_params(params), generators)`, except that an all-greedy batch
        builds no parameter tensors: right after a forward that streamed every weight through the caches,
        their few small host tensors cost more than the argmax itself."""
        if all(p.greedy for p in params):
            return argmax_rows(logits)
        return self(logits, SamplingTensors.from_params(params, logits.device), generators)

    def __call__(
        self, logits: torch.Tensor, t: SamplingTensors, generators: Sequence[torch.Generator | None]
    ) -> torch.Tensor:
        if t.all_greedy:
            return argmax_rows(logits)
        if self.backend is KernelBackend.TRITON:
            from kilotok.kernels.triton.sampling import sample_tokens  # Triton is optional: import on use

            noise = exponential_noise(logits.shape, generators, logits.device)
            return sample_tokens(logits, noise, t.temperatures, t.top_k, t.top_p, t.min_p, t.greedy, t.any_top_k,
                                 t.any_top_p, t.any_min_p)
        return sample(processed_probs(logits, t), generators)
