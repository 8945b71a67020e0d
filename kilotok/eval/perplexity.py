"""Perplexity of a model on a token sequence, scored window by window (see windows.py).

For each window, the model's logits at every position come from one prefill (sequence_logits.py); the
negative log-likelihood of each target token is summed in float64, and perplexity is exp(mean NLL).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from kilotok.errors import InvalidRequestError
from kilotok.eval.sequence_logits import SequenceLogits
from kilotok.eval.texts import DEFAULT_TEXT, TEXT_PACKAGE, TEXT_PACKAGE_VERSION, load_text
from kilotok.eval.windows import perplexity_windows
from kilotok.loader.registry import load_checkpoint
from kilotok.models.builder import build_model, resolve_weight_mode

DEFAULT_CONTEXT_LEN = 1024
DEFAULT_MAX_TOKENS = 16384

LogitsFn = Callable[[list[int]], torch.Tensor]


@dataclass(frozen=True)
class NllTotal:
    num_tokens: int
    """Tokens scored (targets), not tokens read."""
    total_nll: float
    """Sum of -log p(token | its window's earlier tokens), in nats."""

    @property
    def mean_nll(self) -> float:
        return self.total_nll / self.num_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def target_nlls(logits: torch.Tensor, token_ids: list[int], first_target: int) -> torch.Tensor:
    """-log p of tokens first_target.. of `token_ids` (window-relative), from a window's logits [L, V]."""
    log_probs = torch.log_softmax(logits[first_target - 1 : -1].double(), dim=-1)
    targets = torch.tensor(token_ids[first_target:], dtype=torch.int64, device=logits.device)
    return -log_probs.gather(1, targets[:, None]).squeeze(1)


def score_tokens(logits_fn: LogitsFn, token_ids: list[int], context_len: int, stride: int | None = None,
                 progress: bool = False) -> NllTotal:
    """Total NLL of every scored token of `token_ids`, one `logits_fn` call per window."""
    windows = perplexity_windows(len(token_ids), context_len, stride)
    if not windows:
        raise InvalidRequestError(f"the text has {len(token_ids)} tokens; perplexity needs at least 2")
    total, count = 0.0, 0
    for window in tqdm(windows, desc="windows", disable=not progress, leave=False):
        tokens = token_ids[window.start : window.end]
        nlls = target_nlls(logits_fn(tokens), tokens, window.first_target - window.start)
        total += nlls.sum().item()
        count += window.num_targets
    return NllTotal(count, total)


@dataclass(frozen=True)
class PerplexityReport:
    model: str
    dtype: str
    text: str
    text_source: str
    text_tokens: int
    """Tokens of the text that were read (the first --max-tokens)."""
    context_len: int
    stride: int
    num_windows: int
    scored_tokens: int
    mean_nll: float
    perplexity: float

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_perplexity(model: str = "smollm2-135m", dtype: str = "fp32", text: str = DEFAULT_TEXT,
                        max_tokens: int = DEFAULT_MAX_TOKENS, context_len: int = DEFAULT_CONTEXT_LEN,
                        stride: int | None = None, progress: bool = True) -> PerplexityReport:
    """Load `model` in `dtype`, read the first `max_tokens` tokens of `text` and score them."""
    if max_tokens < 2:
        raise InvalidRequestError(f"--max-tokens must be at least 2, got {max_tokens}")
    stride = context_len if stride is None else stride
    source = f"{TEXT_PACKAGE}=={TEXT_PACKAGE_VERSION}:{text}"
    words = load_text(text)
    checkpoint = load_checkpoint(model, progress=progress)
    max_positions = checkpoint.config.max_position_embeddings
    if context_len > max_positions:
        raise InvalidRequestError(f"--context-len {context_len} exceeds the model's context of {max_positions}")
    mode = resolve_weight_mode(dtype, checkpoint)
    token_ids = checkpoint.tokenizer.encode(words)[:max_tokens]
    llama = build_model(checkpoint, mode, progress=progress)
    del checkpoint
    total = score_tokens(SequenceLogits(llama, context_len), token_ids, context_len, stride, progress)
    return PerplexityReport(
        model=model, dtype=mode, text=text, text_source=source, text_tokens=len(token_ids),
        context_len=context_len, stride=stride, num_windows=len(perplexity_windows(len(token_ids), context_len,
                                                                                   stride)),
        scored_tokens=total.num_tokens, mean_nll=total.mean_nll, perplexity=total.perplexity,
    )
