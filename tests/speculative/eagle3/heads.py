"""A small random EAGLE-3 head and its target's config, for the head, checkpoint and training tests."""

from __future__ import annotations

import torch

from kilotok.models.config import ModelConfig
from kilotok.speculative.eagle3 import Eagle3Config, Eagle3DraftModel

TARGET = ModelConfig(architecture="llama", vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=8,
                     num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64)


def make_draft(seed: int = 0, draft_vocab: int = 40) -> Eagle3DraftModel:
    torch.manual_seed(seed)
    model = Eagle3DraftModel(Eagle3Config.for_target(TARGET, draft_vocab), torch.randn(97, 32))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.2)
    return model.eval()


def causal(length: int, batch: int = 1) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril().expand(batch, length, length)
