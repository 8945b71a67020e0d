"""Registry entries for the sampling tail over the vocabulary (kernels/triton/sampling.py): greedy argmax,
and temperature with top-k and top-p, one kernel per row with no host sync. The references are the engine's
PyTorch sampler (layers/sampler.py): `argmax`, and `processed_probs` then the exponential race on the same
Exp(1) noise, so both draw the same token (tolerance 0: a differing token fails the check)."""

from __future__ import annotations

import torch

from kilotok.bench.kernel_registry.base import BenchKernel, KernelCall, ModelShape, Workload
from kilotok.layers.sampler import SamplingTensors, processed_probs, race

TEMPERATURE = 0.7
TOP_K = 50
TOP_P = 0.9
LOGIT_SCALE = 1.5
"""Logits of this spread make both cut-offs matter: turning off top-k changes 11-94% of the drawn tokens at
300 to 202,048 tokens of vocabulary, turning off top-p about 10% (measured on the reference, 64 rows)."""


def _sampling_inputs(greedy: bool):
    def inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
        logits = torch.randn(tokens, model.vocab, device=device) * LOGIT_SCALE
        noise = torch.empty(tokens, model.vocab, device=device).exponential_()
        rows = torch.ones(tokens, device=device)
        options = {"use_top_k": not greedy, "use_top_p": not greedy, "max_top_k": 0 if greedy else TOP_K}
        return KernelCall((logits, noise, rows * TEMPERATURE, (rows * TOP_K).long(), rows * TOP_P, rows * 0.0,
                           rows.bool() if greedy else ~rows.bool()), options)

    return inputs


def _greedy_reference(logits, noise, temperatures, top_k, top_p, min_p, greedy, use_top_k, use_top_p, max_top_k):
    return logits.argmax(dim=-1)


def _sampling_reference(logits, noise, temperatures, top_k, top_p, min_p, greedy, use_top_k, use_top_p, max_top_k):
    tensors = SamplingTensors(temperatures, top_k, top_p, min_p, greedy, all_greedy=False, any_greedy=False,
                              any_top_k=use_top_k, any_top_p=use_top_p, any_min_p=False, max_top_k=max_top_k)
    return race(processed_probs(logits, tensors), noise)


def _sampling_kernel(logits, noise, temperatures, top_k, top_p, min_p, greedy, use_top_k, use_top_p, max_top_k):
    from kilotok.kernels.triton.sampling import sample_tokens  # Triton is an optional extra: imported on use

    return sample_tokens(logits, noise, temperatures, top_k, top_p, min_p, greedy, use_top_k, use_top_p, False)


def _greedy_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    """The fp32 logits read once, the token written; a comparison per logit."""
    return Workload(tokens * (model.vocab * 4 + 8), tokens * model.vocab)


def _sampling_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    """Logits and noise (fp32) read once, the row's parameters read, the token written. About 6 operations per
    logit: scale, exponential, the two cut-off comparisons, the race's division and comparison. (The
    kernel's bisections read the row again per pass, from the L2 cache.)"""
    return Workload(tokens * (2 * model.vocab * 4 + 4 * 4 + 8 + 1 + 8), 6 * tokens * model.vocab)


ENTRIES = (
    BenchKernel("greedy_argmax", _sampling_inputs(greedy=True), _greedy_reference, _sampling_kernel,
                _greedy_workload, tolerance=0.0),
    BenchKernel("sample_top_k_top_p", _sampling_inputs(greedy=False), _sampling_reference, _sampling_kernel,
                _sampling_workload, tolerance=0.0),
)
