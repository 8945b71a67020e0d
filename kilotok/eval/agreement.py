"""Greedy agreement: the same chat prompts answered greedily in two weight formats, compared token by
token.

Prompts come from one of two sets, neither drawn from MT-bench, HumanEval or GSM8K:
- held-out: the first user turns of the ShareGPT conversations that were held out from EAGLE-3 draft
  training (data/smollm2-135m-distill/held_out.jsonl.gz, in file order);
- bench: kilotok's own latency prompts (kilotok/bench/prompts.py).

For one prompt, with reference answer r and candidate answer c (each at most max_tokens tokens, ending
early only at end-of-sequence), the compared span is n = max(len(r), len(c)) tokens:
- prefix agreement: the tokens before the first position where they differ, over n. Once greedy
  outputs differ, the rest is conditioned on different text, so this is the share that truly agrees.
- position-wise agreement: the positions i < min(len(r), len(c)) with r[i] == c[i], over n. It also
  counts chance matches after a divergence, so it is at least the prefix agreement.
Over a prompt set both are token-weighted: the sums of the numerators over the sum of the spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kilotok.bench.prompts import BENCH_PROMPTS, HELD_OUT_PROMPTS, Message, bench_prompts, load_chat_prompts
from kilotok.errors import InvalidRequestError, KilotokError
from kilotok.sampling_params import SamplingParams

PROMPT_SETS = ("held-out", "bench")
DEFAULT_NUM_PROMPTS = 16
# The engine's KV cache only needs the prompts plus their answers; the default 1 GiB would be wasted.
KV_CACHE_GB = 0.25

Conversation = list[Message]


def common_prefix_length(reference: Sequence[int], candidate: Sequence[int]) -> int:
    for index, (expected, actual) in enumerate(zip(reference, candidate, strict=False)):
        if expected != actual:
            return index
    return min(len(reference), len(candidate))


def matching_positions(reference: Sequence[int], candidate: Sequence[int]) -> int:
    return sum(expected == actual for expected, actual in zip(reference, candidate, strict=False))


@dataclass(frozen=True)
class AgreementCounts:
    compared_tokens: int
    prefix_tokens: int
    matching_tokens: int
    identical_answers: int
    num_answers: int

    @property
    def prefix_agreement(self) -> float:
        return self.prefix_tokens / self.compared_tokens

    @property
    def positionwise_agreement(self) -> float:
        return self.matching_tokens / self.compared_tokens


def agreement_counts(references: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> AgreementCounts:
    """Counts over answer pairs (one reference and one candidate answer per prompt, in the same order)."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} reference answers but {len(candidates)} candidate answers")
    if not references:
        raise ValueError("agreement needs at least one answer pair")
    pairs = list(zip(references, candidates, strict=True))
    compared = sum(max(len(r), len(c)) for r, c in pairs)
    if compared == 0:
        raise ValueError("every answer is empty; nothing to compare")
    return AgreementCounts(
        compared_tokens=compared,
        prefix_tokens=sum(common_prefix_length(r, c) for r, c in pairs),
        matching_tokens=sum(matching_positions(r, c) for r, c in pairs),
        identical_answers=sum(list(r) == list(c) for r, c in pairs),
        num_answers=len(pairs),
    )


def held_out_prompts(count: int) -> list[Conversation]:
    if not HELD_OUT_PROMPTS.is_file():
        raise KilotokError(f"{HELD_OUT_PROMPTS} is missing: it ships with the kilotok repository; "
                           "use --prompts bench for the built-in prompts")
    prompts = load_chat_prompts(HELD_OUT_PROMPTS)[:count]
    if len(prompts) < count:
        raise InvalidRequestError(f"--num-prompts {count} is more than the {len(prompts)} held-out prompts")
    return prompts


def load_prompt_set(name: str, count: int) -> list[Conversation]:
    if count < 1:
        raise InvalidRequestError(f"--num-prompts must be at least 1, got {count}")
    if name == "held-out":
        return held_out_prompts(count)
    if name == "bench":
        if count > len(BENCH_PROMPTS):
            raise InvalidRequestError(f"--num-prompts {count} is more than the {len(BENCH_PROMPTS)} bench prompts")
        return bench_prompts(count)
    raise InvalidRequestError(f"unknown prompt set {name!r}; choose one of {', '.join(PROMPT_SETS)}")


def greedy_answers(model: str, dtype: str, prompts: list[Conversation], max_tokens: int,
                   progress: bool, device: str = "auto") -> list[list[int]]:
    from kilotok.llm import LLM

    llm = LLM(model, dtype=dtype, compile=False, kv_cache_gb=KV_CACHE_GB, progress=progress, check_tensors=True,
              device=device)
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    return [output.token_ids for output in outputs]


@dataclass(frozen=True)
class AgreementReport:
    model: str
    dtype: str
    reference_dtype: str
    prompts: str
    num_prompts: int
    max_tokens: int
    compared_tokens: int
    prefix_agreement: float
    positionwise_agreement: float
    identical_answers: int

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_agreement(model: str = "smollm2-135m", dtypes: Sequence[str] = ("bf16",), reference_dtype: str = "fp32",
                       max_tokens: int = 128, prompts: str = "held-out", num_prompts: int = DEFAULT_NUM_PROMPTS,
                       progress: bool = True, device: str = "auto") -> list[AgreementReport]:
    """Answer the prompts greedily in `reference_dtype` once, then in each of `dtypes`, and compare, every
    run on `device`."""
    if max_tokens < 1:
        raise InvalidRequestError(f"--max-tokens must be at least 1, got {max_tokens}")
    if not dtypes:
        raise InvalidRequestError("--dtype needs at least one weight format")
    conversations = load_prompt_set(prompts, num_prompts)
    references = greedy_answers(model, reference_dtype, conversations, max_tokens, progress, device)
    reports = []
    for dtype in dtypes:
        counts = agreement_counts(references, greedy_answers(model, dtype, conversations, max_tokens, progress, device))
        reports.append(AgreementReport(
            model=model, dtype=dtype, reference_dtype=reference_dtype, prompts=prompts, num_prompts=num_prompts,
            max_tokens=max_tokens, compared_tokens=counts.compared_tokens,
            prefix_agreement=counts.prefix_agreement, positionwise_agreement=counts.positionwise_agreement,
            identical_answers=counts.identical_answers,
        ))
    return reports
