"""A step's inputs, built on the host from its sequences: flat token rows, their positions and the
`AttentionMetadata` that says where each row's keys and values live in the paged cache (plus, for the
PyTorch reference's decode attention, each row's gathered key window), and the padding rows that warm
up or capture a graph of a given size.

Block 0 is never handed out (engine/block_manager.py): padding rows write their throw-away keys and
values there and attend to its first slot only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kilotok.kernels.attention import VALUE_CHUNK, aligned_window
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.sequence import Sequence

PADDING_BLOCK = 0


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    """[T] int64, one row per new token."""
    positions: torch.Tensor
    """[T] int64."""
    meta: AttentionMetadata
    last_rows: torch.Tensor
    """[B] int64: each sequence's last row, whose logits give its next token."""


def slot_of(seq: Sequence, position: int, block_size: int) -> int:
    """The flat cache slot of `position` in `seq`'s blocks."""
    return seq.block_table[position // block_size] * block_size + position % block_size


def token_rows(seqs: list[Sequence], ends: list[int], padded_batch: int, block_size: int, max_blocks: int,
               device: torch.device) -> StepInputs:
    """Rows for each sequence's tokens from num_cached_tokens to its end in `ends`, padded with one-token
    rows to `padded_batch` sequences."""
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_start_loc = [0]
    block_tables = torch.full((padded_batch, max_blocks), PADDING_BLOCK, dtype=torch.int32)
    for row, (seq, end) in enumerate(zip(seqs, ends, strict=True)):
        start = seq.num_cached_tokens
        input_ids.extend(seq.token_ids[start:end])
        positions.extend(range(start, end))
        slots.extend(slot_of(seq, p, block_size) for p in range(start, end))
        query_start_loc.append(query_start_loc[-1] + end - start)
        block_tables[row, : len(seq.block_table)] = torch.tensor(seq.block_table, dtype=torch.int32)
    context_lens = list(ends)
    for _ in range(padded_batch - len(seqs)):
        input_ids.append(0)
        positions.append(0)
        slots.append(PADDING_BLOCK * block_size)
        query_start_loc.append(query_start_loc[-1] + 1)
        context_lens.append(1)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=block_tables.to(device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
    )
    last_rows = torch.tensor(query_start_loc[1 : len(seqs) + 1], device=device) - 1
    return StepInputs(torch.tensor(input_ids, dtype=torch.int64, device=device),
                      torch.tensor(positions, dtype=torch.int64, device=device), meta, last_rows)


def decode_key_window(seqs: list[Sequence], padded_batch: int, block_size: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat cache slots of every key each decoding sequence attends to, padded to the longest, and
    which of them are real keys: ([B, L] int64, [B, L] bool)."""
    window = aligned_window(max(len(seq) for seq in seqs))
    index = torch.full((padded_batch, window), PADDING_BLOCK * block_size, dtype=torch.int64)
    valid = torch.zeros((padded_batch, window), dtype=torch.bool)
    valid[len(seqs):, 0] = True
    offsets = torch.arange(block_size, dtype=torch.int64)
    for row, seq in enumerate(seqs):
        slots = (torch.tensor(seq.block_table, dtype=torch.int64)[:, None] * block_size + offsets)
        index[row, : len(seq)] = slots.flatten()[: len(seq)]
        valid[row, : len(seq)] = True
    return index.to(device), valid.to(device)


def warm_up_rows(rows: int, block_size: int, max_blocks: int, window: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """A decode batch of `rows` padding rows, shaped like a real one, to build a compiled graph with; `window`
    0 leaves out the gathered key window (kernels that read the block table)."""
    padding_slot = PADDING_BLOCK * block_size
    meta = AttentionMetadata(
        slot_mapping=torch.full((rows,), padding_slot, dtype=torch.int64, device=device),
        block_tables=torch.full((rows, max_blocks), PADDING_BLOCK, dtype=torch.int32, device=device),
        context_lens=torch.ones(rows, dtype=torch.int32, device=device),
        query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device=device),
        decode_rows=True,
    )
    if window:
        meta.kv_gather_index = torch.full((rows, window), padding_slot, dtype=torch.int64, device=device)
        meta.kv_valid = torch.zeros((rows, window), dtype=torch.bool, device=device)
        meta.kv_valid[:, 0] = True
    # Two tensors, not one passed twice: dynamo guards on aliasing, and a graph built for aliased inputs
    # would be rebuilt at the first real step.
    input_ids, positions = (torch.zeros(rows, dtype=torch.int64, device=device) for _ in range(2))
    return input_ids, positions, meta


def chunked_key_window(meta: AttentionMetadata) -> AttentionMetadata:
    """The key window as [B, L / VALUE_CHUNK, VALUE_CHUNK] views with a dynamic chunk count, so one
    compiled graph per batch bucket serves every window length. Marking L itself dynamic fails: attention
    splits the window into fixed chunks, which constrains L to multiples of the chunk."""
    rows = meta.kv_gather_index.shape[0]
    index = meta.kv_gather_index.view(rows, -1, VALUE_CHUNK)
    valid = meta.kv_valid.view(rows, -1, VALUE_CHUNK)
    torch._dynamo.mark_dynamic(index, 1)
    torch._dynamo.mark_dynamic(valid, 1)
    return replace(meta, kv_gather_index=index, kv_valid=valid)
