"""Perplexity of a model on a token sequence, scored window by window.

Window i covers tokens [i * stride, i * stride + context_len). Its logits at position p predict token
p + 1, so a window can score any of its tokens but the first. Each window scores only the targets that
no earlier window scored: with stride == context_len (non-overlapping windows) that is every token but
the window's first; with a smaller stride, later windows give their first context_len - stride tokens
as context only, and every token after the text's first is scored exactly once.

For each window, the model's logits at every position come from one prefill through kilotok's own model
forward (`SequenceLogits`); the negative log-likelihood of each target token is summed in float64, and
perplexity is exp(mean NLL).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from kilotok.errors import InvalidRequestError
from kilotok.eval.texts import DEFAULT_TEXT, TEXT_PACKAGE, TEXT_PACKAGE_VERSION, load_text
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.kernels.device import resolve_device
from kilotok.loader.tensor_check import check_tensors
from kilotok.models.builder import build_model
from kilotok.models.causal_lm import CausalLM
from kilotok.models.registry import load_checkpoint, model_config
from kilotok.quant.formats import check_dtype_device, resolve_weight_format

DEFAULT_CONTEXT_LEN = 1024
DEFAULT_MAX_TOKENS = 16384
BLOCK_SIZE = 16

LogitsFn = Callable[[list[int]], torch.Tensor]


@dataclass(frozen=True)
class Window:
    start: int
    """First token of the window (context only, never a target)."""
    end: int
    """One past the window's last token."""
    first_target: int
    """First token this window scores; it scores tokens first_target..end-1."""

    @property
    def num_targets(self) -> int:
        return self.end - self.first_target


def perplexity_windows(num_tokens: int, context_len: int, stride: int | None = None) -> list[Window]:
    """The windows over a text of `num_tokens` tokens; windows that would score nothing are left out."""
    stride = context_len if stride is None else stride
    if context_len < 2:
        raise InvalidRequestError(f"--context-len must be at least 2 tokens, got {context_len}")
    if not 1 <= stride <= context_len:
        raise InvalidRequestError(f"--stride must be between 1 and --context-len ({context_len}), got {stride}")
    windows: list[Window] = []
    scored_until = 1  # token 0 has no context, so nothing can predict it
    for start in range(0, max(num_tokens - 1, 0), stride):
        end = min(start + context_len, num_tokens)
        first_target = max(start + 1, scored_until)
        if end > first_target:
            windows.append(Window(start, end, first_target))
            scored_until = end
    return windows


class SequenceLogits:
    """Logits at every position of one token sequence. The engine only needs the last position's logits;
    perplexity needs all of them. This runs a single prefill over a private paged KV cache sized for the
    longest window (the engine's cache is not touched: the model gets its own cache tensors here, so build
    a separate model for this)."""

    def __init__(self, model: CausalLM, max_len: int) -> None:
        self.model = model
        self.max_len = max_len
        self.device = next(model.parameters()).device
        num_blocks = -(-max_len // BLOCK_SIZE)
        config = model.config
        model.allocate_kv_cache((num_blocks, BLOCK_SIZE, config.num_kv_heads, config.head_dim), self.device)

    @torch.inference_mode()
    def __call__(self, token_ids: list[int]) -> torch.Tensor:
        """[len(token_ids), vocab] float32: row p is the model's prediction for token p + 1."""
        length = len(token_ids)
        if not 1 <= length <= self.max_len:
            raise ValueError(f"sequence of {length} tokens; this scorer holds 1 to {self.max_len}")
        num_blocks = -(-length // BLOCK_SIZE)
        # One sequence laid out in blocks 0, 1, 2, ... in order, so slot p is simply p.
        meta = AttentionMetadata(
            slot_mapping=torch.arange(length, dtype=torch.int64, device=self.device),
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=self.device)[None],
            context_lens=torch.tensor([length], dtype=torch.int32, device=self.device),
            query_start_loc=torch.tensor([0, length], dtype=torch.int32, device=self.device),
        )
        input_ids = torch.tensor(token_ids, dtype=torch.int64, device=self.device)
        positions = torch.arange(length, dtype=torch.int64, device=self.device)
        hidden, _ = self.model(input_ids, positions, meta)
        return self.model.compute_logits(hidden)


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
                        stride: int | None = None, progress: bool = True, device: str = "auto") -> PerplexityReport:
    """Load `model` in `dtype` onto `device` (auto, cpu, cuda), read the first `max_tokens` tokens of `text`
    and score them."""
    if max_tokens < 2:
        raise InvalidRequestError(f"--max-tokens must be at least 2, got {max_tokens}")
    stride = context_len if stride is None else stride
    on = resolve_device(device)
    check_dtype_device(dtype, on)
    source = f"{TEXT_PACKAGE}=={TEXT_PACKAGE_VERSION}:{text}"
    words = load_text(text)
    checkpoint = load_checkpoint(model, progress=progress)
    check_tensors(checkpoint)  # a damaged weight would be measured as a bad weight format
    max_positions = model_config(checkpoint.config).max_position_embeddings
    if context_len > max_positions:
        raise InvalidRequestError(f"--context-len {context_len} exceeds the model's context of {max_positions}")
    fmt = resolve_weight_format(dtype, checkpoint.weights, on)
    token_ids = checkpoint.tokenizer.encode(words)[:max_tokens]
    built = build_model(checkpoint, fmt, progress=progress, device=on)
    del checkpoint
    total = score_tokens(SequenceLogits(built, context_len), token_ids, context_len, stride, progress)
    return PerplexityReport(
        model=model, dtype=fmt.name, text=text, text_source=source, text_tokens=len(token_ids),
        context_len=context_len, stride=stride, num_windows=len(perplexity_windows(len(token_ids), context_len,
                                                                                   stride)),
        scored_tokens=total.num_tokens, mean_nll=total.mean_nll, perplexity=total.perplexity,
    )
