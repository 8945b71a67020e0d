"""The inputs of a verify forward: each sequence's root (its last, uncached token) and draft tree.

Attention goes through the gathered key window that decode steps use, with one window per row: a
node's window lists the cached prefix, then the root and the node's ancestors down to itself, in
position order. Every row therefore attends to exactly the keys, in exactly the order, that a plain
decode step at that node's position would, and computes them with the same kernel, which is what
keeps speculative greedy output identical to plain greedy output in reduced precision too.
"""

from __future__ import annotations

import torch

from kilotok.kernels.attention import aligned_window
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.runner.step_inputs import PADDING_BLOCK
from kilotok.sequence import Sequence
from kilotok.speculative.tree import DraftTree

TREE_ALIGN = 16
"""Tree-mask widths are padded to a multiple of this, so compiled decode graphs see few distinct shapes."""


def verify_width(trees: list[DraftTree]) -> int:
    """Rows per sequence: the root plus the largest tree (smaller trees are padded)."""
    return 1 + max(len(tree) for tree in trees)


def build_verify_inputs(seqs: list[Sequence], trees: list[DraftTree], width: int, padded_rows: int,
                        block_size: int, max_blocks: int, device: torch.device):
    """(input_ids [padded_rows], positions [padded_rows], AttentionMetadata) shaped exactly like a decode
    batch of `padded_rows` one-token sequences, so the compiled decode graph of that size runs it.

    Node i of a tree writes its K/V at the slot of position len(seq) + i; its RoPE position is the root's
    plus its depth. Rows past a tree's end, and rows past `len(seqs) * width`, are padding: they write
    into the padding block and attend only to that slot.

    Besides the gathered windows (the PyTorch reference reads those), the metadata carries the tree in
    the form the Triton decode kernel reads with the block table: each row's tree mask and the tree keys'
    positions (kernels/attention_metadata.py).

    Built on the host, where the trees and block tables are (Python lists), and copied to `device` once
    per tensor, as the decode step's inputs are (runner/step_inputs.py)."""
    padding_slot = PADDING_BLOCK * block_size
    offsets = torch.arange(block_size, dtype=torch.int64)
    window = aligned_window(max(len(seq) for seq in seqs) + width - 1)
    gather = torch.full((padded_rows, window), padding_slot, dtype=torch.int64)
    valid = torch.zeros((padded_rows, window), dtype=torch.bool)
    valid[:, 0] = True
    input_ids = [0] * padded_rows
    positions = [0] * padded_rows
    slots = [padding_slot] * padded_rows
    context_lens = [1] * padded_rows
    block_tables = torch.full((padded_rows, max_blocks), PADDING_BLOCK, dtype=torch.int32)
    tree_width = -(-width // TREE_ALIGN) * TREE_ALIGN
    tree_mask = torch.zeros((padded_rows, tree_width), dtype=torch.bool)
    tree_positions = torch.zeros((padded_rows, tree_width), dtype=torch.int32)
    for b, (seq, tree) in enumerate(zip(seqs, trees, strict=True)):
        root = len(seq) - 1
        table = torch.tensor(seq.block_table, dtype=torch.int64)
        all_slots = (table[:, None] * block_size + offsets).flatten()
        node_slots = all_slots[root : root + len(tree) + 1]
        first = b * width
        rows = slice(first, first + len(tree) + 1)
        input_ids[rows] = [seq.token_ids[-1], *tree.tokens]
        positions[rows] = [root] + [root + depth for depth in tree.depths]
        slots[rows] = node_slots.tolist()
        block_tables[rows, : len(table)] = table.to(torch.int32)
        mask = tree.ancestor_mask(len(tree) + 1)
        tree_mask[rows, : len(tree) + 1] = mask
        tree_positions[rows, : len(tree) + 1] = torch.tensor(positions[rows], dtype=torch.int32)
        for r in range(len(tree) + 1):
            seen = node_slots[mask[r]]
            gather[first + r, :root] = all_slots[:root]
            gather[first + r, root : root + len(seen)] = seen
            valid[first + r, : root + len(seen)] = True
            context_lens[first + r] = root + len(seen)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=block_tables.to(device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.arange(padded_rows + 1, dtype=torch.int32, device=device),
        kv_gather_index=gather.to(device),
        kv_valid=valid.to(device),
        tree_mask=tree_mask.to(device),
        tree_positions=tree_positions.to(device),
    )
    ids = torch.tensor(input_ids, dtype=torch.int64, device=device)
    return ids, torch.tensor(positions, dtype=torch.int64, device=device), meta
