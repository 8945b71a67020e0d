"""Runs our model directly on a hand-built paged KV cache, for comparisons with the reference."""

from __future__ import annotations

import torch

from kilotok.kernels.attention import aligned_window
from kilotok.kernels.attention_metadata import AttentionMetadata

BLOCK_SIZE = 4


def attach_cache(model, num_blocks: int) -> None:
    """A zeroed cache of `num_blocks` blocks per layer, in the model's activation dtype."""
    config = model.config
    model.allocate_kv_cache((num_blocks, BLOCK_SIZE, config.num_kv_heads, config.head_dim), "cpu")


def prompt_logits(model, ids: list[int]) -> torch.Tensor:
    """fp32 logits of every position of one prompt, prefilled into a fresh cache."""
    blocks = -(-len(ids) // BLOCK_SIZE)
    attach_cache(model, blocks + 1)
    with torch.no_grad():
        return paged_step(model, [ids], [0], [list(range(1, blocks + 1))])[0].float()


def paged_step(model, seqs: list[list[int]], cached: list[int], tables: list[list[int]]) -> list[torch.Tensor]:
    """Feed each sequence's tokens from `cached[b]` on, in one ragged forward; logits per new token."""
    ids, positions, slots, starts = [], [], [], [0]
    for tokens, start, table in zip(seqs, cached, tables, strict=True):
        for p in range(start, len(tokens)):
            ids.append(tokens[p])
            positions.append(p)
            slots.append(table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE)
        starts.append(starts[-1] + len(tokens) - start)
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        context_lens=torch.tensor([len(t) for t in seqs], dtype=torch.int32),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
    )
    hidden, _ = model(torch.tensor(ids), torch.tensor(positions), meta)
    logits = model.compute_logits(hidden)
    return [logits[starts[b] : starts[b + 1]] for b in range(len(seqs))]


def decode_step(model, seqs: list[list[int]], tables: list[list[int]]) -> torch.Tensor:
    """Each sequence's last token through the gathered key window, as the engine's decode steps run it;
    logits [B, V]."""
    window = aligned_window(max(len(tokens) for tokens in seqs))
    gather = torch.zeros(len(seqs), window, dtype=torch.int64)
    valid = torch.zeros(len(seqs), window, dtype=torch.bool)
    for b, (tokens, table) in enumerate(zip(seqs, tables, strict=True)):
        slots = [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(len(tokens))]
        gather[b, : len(tokens)] = torch.tensor(slots)
        valid[b, : len(tokens)] = True
    width = max(len(t) for t in tables)
    meta = AttentionMetadata(
        slot_mapping=gather[torch.arange(len(seqs)), valid.sum(-1) - 1],
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        context_lens=torch.tensor([len(t) for t in seqs], dtype=torch.int32),
        query_start_loc=torch.arange(len(seqs) + 1, dtype=torch.int32),
        kv_gather_index=gather,
        kv_valid=valid,
    )
    ids = torch.tensor([tokens[-1] for tokens in seqs])
    positions = torch.tensor([len(tokens) - 1 for tokens in seqs])
    hidden, _ = model(ids, positions, meta)
    return model.compute_logits(hidden)
