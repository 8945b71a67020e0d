"""The optimisation loop: AdamW over epochs of shuffled batches, a checkpoint after every epoch.

Batch order depends only on (seed, epoch), so a run resumed from an epoch checkpoint takes exactly the
steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from kilotok.speculative.eagle3.model import Eagle3DraftModel
from kilotok.train.features import FeatureSet
from kilotok.train.trainer import collate, ttt_loss, unroll

SORT_CHUNK_BATCHES = 8
"""Sequences are length-sorted inside chunks of this many batches: less padding, order still shuffled."""


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 4
    batch_size: int = 8
    lr: float = 3e-4
    ttt_steps: int = 7
    seed: int = 0
    loss_decay: float = 0.8
    max_grad_norm: float = 0.5
    warmup_steps: int = 20


@dataclass
class FitHistory:
    epoch_loss: list[float] = field(default_factory=list)
    epoch_accuracy: list[float] = field(default_factory=list)


def epoch_batches(features: FeatureSet, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    lengths = (features.offsets[1:] - features.offsets[:-1]).tolist()
    chunk = batch_size * SORT_CHUNK_BATCHES
    order = [i for s in range(0, len(order), chunk) for i in sorted(order[s : s + chunk], key=lengths.__getitem__)]
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def fit(model: Eagle3DraftModel, features: FeatureSet, head_rows: torch.Tensor, settings: FitSettings,
        state_path: Path | None = None, resume: bool = False) -> FitHistory:
    """Train in place. With `resume`, continue from the epoch checkpoint at `state_path` if there is one."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    total_steps = settings.epochs * math.ceil(len(features) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_scale(step, total_steps, settings))
    history, first_epoch = FitHistory(), 0
    if resume and state_path is not None and state_path.is_file():
        first_epoch, history = _restore(state_path, model, optimizer, scheduler)
    model.train()
    for epoch in range(first_epoch, settings.epochs):
        loss_sum, accuracy_sum, batches = 0.0, 0.0, epoch_batches(features, settings.batch_size, settings.seed, epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{settings.epochs}")
        for indices in bar:
            loss, accuracy = ttt_loss(unroll(model, collate(features, indices, head_rows), settings.ttt_steps),
                                      settings.loss_decay)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            loss_sum, accuracy_sum = loss_sum + loss.item(), accuracy_sum + accuracy
            bar.set_postfix(loss=f"{loss.item():.3f}", acc0=f"{accuracy:.3f}")
        history.epoch_loss.append(loss_sum / len(batches))
        history.epoch_accuracy.append(accuracy_sum / len(batches))
        if state_path is not None:
            _save(state_path, model, optimizer, scheduler, epoch + 1, history)
    model.eval()
    return history


def _lr_scale(step: int, total_steps: int, settings: FitSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save(path: Path, model, optimizer, scheduler, epoch: int, history: FitHistory) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("embed_tokens.")}
    state = {"model": weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "history": history.__dict__}
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # never leave a half-written checkpoint behind


def _restore(path: Path, model, optimizer, scheduler) -> tuple[int, FitHistory]:
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"], FitHistory(**state["history"])
