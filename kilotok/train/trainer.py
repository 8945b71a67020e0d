"""Training-time test: unroll the draft over several steps on target features, as it runs when drafting.

Step 0 reads the fused target features; step j reads the draft's own output of step j-1 and the true
token j positions further on, so the head learns to continue from its own (imperfect) features. A query
at step j and position t sees the step-0 keys of positions <= t (the real prefix) and its own earlier
steps at position t (its draft ancestors), which is the mask a draft chain gives at inference. The loss
at step j is the soft cross-entropy against the target's next-token distribution restricted to the
draft vocabulary, weighted by decay**j, on response tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.train.features import FeatureSet


@dataclass
class Batch:
    token_ids: torch.Tensor  # [B, T]
    aux_hidden: torch.Tensor  # [B, T, 3d]
    target_logits: torch.Tensor  # [B, T, draft_vocab]: the target at position t, over the draft vocabulary
    lengths: torch.Tensor  # [B]
    prompt_lens: torch.Tensor  # [B]


@dataclass
class StepResult:
    logits: torch.Tensor  # [B, W, draft_vocab] for window positions start..T-1
    target_logits: torch.Tensor  # [B, W, draft_vocab] what the target says there
    next_tokens: torch.Tensor  # [B, W] the token the step should predict
    valid: torch.Tensor  # [B, W] bool


def collate(features: FeatureSet, indices: list[int], head_rows: torch.Tensor) -> Batch:
    """Right-padded batch; `head_rows` [draft_vocab, d] are the target head's rows for the draft vocabulary."""
    spans = [features.sequence(i) for i in indices]
    length = max(s.stop - s.start for s, _ in spans)
    d = features.final_hidden.shape[1]
    token_ids = torch.zeros(len(spans), length, dtype=torch.long)
    aux = torch.zeros(len(spans), length, 3 * d)
    final = torch.zeros(len(spans), length, d)
    for row, (span, _) in enumerate(spans):
        n = span.stop - span.start
        token_ids[row, :n] = features.token_ids[span]
        aux[row, :n] = features.aux_hidden[span].float()
        final[row, :n] = features.final_hidden[span].float()
    lengths = torch.tensor([s.stop - s.start for s, _ in spans])
    prompt_lens = torch.tensor([p for _, p in spans])
    device = head_rows.device
    return Batch(token_ids.to(device), aux.to(device), final.to(device) @ head_rows.T, lengths.to(device),
                 prompt_lens.to(device))


def _shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """x[:, t + by] at column t, zero-padded past the end."""
    pad = torch.zeros_like(x[:, :by])
    return torch.cat((x[:, by:], pad), dim=1)[:, : x.shape[1]]


def _step_mask(batch: int, length: int, start: int, step: int, device: torch.device) -> torch.Tensor:
    """[B, W, T + step*W]: causal over the step-0 keys, then one diagonal block per earlier step and itself."""
    positions = torch.arange(length, device=device)
    window = positions[start:]
    causal = positions[None, :] <= window[:, None]
    diagonal = torch.eye(length - start, dtype=torch.bool, device=device)
    return torch.cat([causal] + [diagonal] * step, dim=1).expand(batch, -1, -1)


def unroll(model: Eagle3DraftModel, batch: Batch, steps: int) -> list[StepResult]:
    """Run `steps` draft steps over every position; later steps only over positions whose loss can count."""
    size, length = batch.token_ids.shape
    device = batch.token_ids.device
    max_position = model.config.max_position_embeddings - 1
    positions = torch.arange(length, device=device).expand(size, length)
    start = max(0, int(batch.prompt_lens.min()) - 2 - steps)
    hidden = model.fuse(batch.aux_hidden)
    past_k, past_v, results = None, None, []
    for step in range(steps):
        window = slice(0, length) if step == 0 else slice(start, length)
        inputs = _shift(batch.token_ids, 1 + step)[:, window]
        mask = (torch.ones(length, length, dtype=torch.bool, device=device).tril().expand(size, -1, -1)
                if step == 0 else _step_mask(size, length, start, step, device))
        out = model(inputs, hidden, (positions[:, window] + step).clamp(max=max_position), past_k, past_v, mask)
        past_k = out.k if past_k is None else torch.cat((past_k, out.k), dim=1)
        past_v = out.v if past_v is None else torch.cat((past_v, out.v), dim=1)
        hidden = out.hidden if step else out.hidden[:, start:]
        target_pos = torch.arange(start, length, device=device) + 2 + step  # the token this step predicts
        results.append(StepResult(
            logits=out.logits[:, start:] if step == 0 else out.logits,
            target_logits=_shift(batch.target_logits, 1 + step)[:, start:],
            next_tokens=_shift(batch.token_ids, 2 + step)[:, start:],
            valid=(target_pos < batch.lengths[:, None]) & (target_pos >= batch.prompt_lens[:, None]),
        ))
    return results


def ttt_loss(results: list[StepResult], decay: float) -> tuple[torch.Tensor, float]:
    """Weighted soft cross-entropy over the steps, and the step-0 top-1 agreement with the target."""
    total = torch.zeros(())
    for step, result in enumerate(results):
        target = result.target_logits.softmax(dim=-1)
        per_token = -(target * F.log_softmax(result.logits, dim=-1)).sum(dim=-1)
        count = result.valid.sum().clamp(min=1)
        total = total + decay**step * (per_token * result.valid).sum() / count
    first = results[0]
    agree = (first.logits.argmax(-1) == first.target_logits.argmax(-1)) & first.valid
    accuracy = float(agree.sum()) / max(1, int(first.valid.sum()))
    return total, accuracy
