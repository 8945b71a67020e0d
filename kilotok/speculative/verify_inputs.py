"""The inputs of a verify forward: each sequence's root (its last, uncached token) and draft tree; and,
after acceptance, the K/V moves that leave the cache as plain decoding would have.

Attention goes through the gathered key window that decode steps use, with one window per row: a
node's window lists the cached prefix, then the root and the node's ancestors down to itself, in
position order. Every row therefore attends to exactly the keys, in exactly the order, that a plain
decode step at that node's position would, and computes them with the same kernel, which is what
keeps speculative greedy output identical to plain greedy output in reduced precision too. Kernels that
read the block table get each row's tree mask instead and read the same keys in the same order
(kernels/triton/attention_decode.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.functional import pad

from kilotok.kernels.attention import aligned_window
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.runner.step_inputs import PADDING_BLOCK
from kilotok.sequence import Sequence
from kilotok.speculative.tree import DraftTrees
from kilotok.speculative.verify import Acceptance, TreeRows

TREE_ALIGN = 16
"""Tree-mask widths are padded to a multiple of this, so compiled decode graphs see few distinct shapes."""


@dataclass(frozen=True)
class VerifyBatch:
    """One verify step's rows, shaped exactly like a decode batch of `padded_rows` one-token sequences so
    the compiled decode graph of that size runs it, and what acceptance and the K/V moves read after it:
    the trees' structure, each sequence's root position and block table."""

    input_ids: torch.Tensor
    """[padded_rows] int64."""
    positions: torch.Tensor
    """[padded_rows] int64."""
    meta: AttentionMetadata
    trees: TreeRows
    """The B trees as rows [B, width]: the first B * width of the step's rows."""
    roots: torch.Tensor
    """[B] each sequence's root position (its last token's, len(seq) - 1)."""
    slots: torch.Tensor
    """[B, window] int64 the cache slot of each of a sequence's positions up to the rows' key window, which
    holds every position the rows read or write."""

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor | None, ...]) -> VerifyBatch:
        """The batch from `tree_rows`' tensors."""
        (input_ids, positions, query_start_loc, slot_mapping, block_tables, context_lens, tree_mask,
         kv_gather_index, kv_valid, tokens, ancestors, parents, depths, roots, slots) = tensors
        meta = AttentionMetadata(query_start_loc=query_start_loc, slot_mapping=slot_mapping,
                                 block_tables=block_tables, context_lens=context_lens, tree_mask=tree_mask,
                                 kv_gather_index=kv_gather_index, kv_valid=kv_valid)
        return cls(input_ids, positions, meta, TreeRows(tokens, ancestors, parents, depths), roots, slots)


def kv_moves(roots: torch.Tensor, slots: torch.Tensor, acceptance: Acceptance) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and destination cache slots [B * (W - 1)] that move each accepted node from the slot it was
    written to (root + its row) to the slot of its depth (root + depth), where a plain decode would have
    written it; `roots` and `slots` a `VerifyBatch`'s. Columns past a tree's accepted nodes copy the root's
    slot onto itself, so the shape is fixed and no other destination repeats."""
    roots = roots[:, None]
    depths = torch.arange(1, acceptance.path_rows.shape[1] + 1, device=roots.device)
    accepted = depths <= acceptance.counts[:, None]
    sources = torch.where(accepted, roots + acceptance.path_rows, roots)
    destinations = torch.where(accepted, roots + depths, roots)
    return slots.gather(1, sources).flatten(), slots.gather(1, destinations).flatten()


def verify_width(trees: DraftTrees) -> int:
    """Rows per sequence: the root plus the largest tree (smaller trees are padded)."""
    return 1 + max(trees.sizes)


def pack_sequences(seqs: list[Sequence], trees: DraftTrees, max_blocks: int, device: torch.device) -> torch.Tensor:
    """[B, 3 + max_blocks] what verification reads of each sequence on the host, in one copy to `device`:
    its root position, its root token, its tree's row count (root included) and its block table."""
    host = [[len(seq) - 1, seq.token_ids[-1], size + 1, *seq.block_table,
             *[PADDING_BLOCK] * (max_blocks - len(seq.block_table))]
            for seq, size in zip(seqs, trees.sizes, strict=True)]
    # From pinned memory a copy to a GPU is asynchronous; from pageable memory it would block the host.
    return torch.tensor(host, dtype=torch.int64, pin_memory=device.type == "cuda").to(device, non_blocking=True)


def build_verify_inputs(seqs: list[Sequence], trees: DraftTrees, width: int, padded_rows: int, block_size: int,
                        max_blocks: int, device: torch.device, key_windows: bool = True,
                        rows: Callable[..., tuple[torch.Tensor | None, ...]] | None = None) -> VerifyBatch:
    """The verify step of `seqs` with their `trees`, each laid out as `width` rows (the root, the nodes,
    padding), padded to `padded_rows` rows.

    Node i of a tree writes its K/V at the slot of position len(seq) + i; its RoPE position is the root's
    plus its depth. Rows past a tree's end, and rows past `len(seqs) * width`, are padding: they write
    into the padding block and attend only to that slot.

    The metadata carries the tree in the form the Triton decode kernel reads with the block table, each
    row's tree mask (kernels/attention_metadata.py); with `key_windows`, also each row's gathered key
    window, which the PyTorch reference reads.

    The sequences go to `device` in one copy (`pack_sequences`); the trees are there already; the rest is
    built there, for every row at once, by `rows` (default `tree_rows`; verify_steps.py passes its compiled
    graph), given every position a row reads or writes as `keys`."""
    keys = torch.arange(aligned_window(max(len(seq) for seq in seqs) + width - 1), device=device)
    return VerifyBatch.from_tensors((rows or tree_rows)(
        pack_sequences(seqs, trees, max_blocks, device), trees.tokens.to(device), trees.parents.to(device), keys,
        width, trees.max_depth, padded_rows, block_size, key_windows))


def tree_rows(sequences: torch.Tensor, tree_tokens: torch.Tensor, tree_parents: torch.Tensor, keys: torch.Tensor,
              width: int, max_depth: int, padded_rows: int, block_size: int,
              key_windows: bool) -> tuple[torch.Tensor | None, ...]:
    """build_verify_inputs' tensors (`VerifyBatch.from_tensors` reads them) from B sequences' packed host
    data (`pack_sequences`), their trees' tokens and parents [B, N] and the key positions `keys`: tensor ops
    of shapes known on the host, with no read of the values."""
    roots, root_tokens, sizes, tables = sequences.split([1, 1, 1, sequences.shape[1] - 3], dim=1)
    roots, sizes = roots.squeeze(1), sizes.squeeze(1)
    nodes = width - 1
    extra = nodes - min(tree_tokens.shape[1], nodes)
    row_tokens = torch.cat((root_tokens, pad(tree_tokens[:, :nodes], (0, extra))), dim=1)
    parent_rows = torch.cat((torch.zeros_like(root_tokens), pad(tree_parents[:, :nodes] + 1, (0, extra))), dim=1)
    batch = row_tokens.shape[0]
    device = row_tokens.device
    columns = torch.arange(width, device=device)
    in_tree = columns < sizes[:, None]
    # A row sees itself and what its parent row sees: `max_depth` rounds reach every ancestor.
    eye = torch.eye(width, dtype=torch.bool, device=device).expand(batch, width, width)
    seen = eye
    for _ in range(max_depth):
        seen = eye | seen.gather(1, parent_rows[:, :, None].expand(batch, width, width))
    seen = seen & in_tree[:, :, None]
    visible = seen.sum(dim=-1)
    depths = torch.where(in_tree, visible - 1, 0)
    positions = torch.where(in_tree, roots[:, None] + depths, 0)
    window = keys.shape[0]
    # Every position a row may read or write lies in its sequence's first `window` positions.
    blocks = (keys // block_size).clamp(max=tables.shape[1] - 1)
    seq_slots = tables.gather(1, blocks.expand(batch, window)) * block_size + keys % block_size
    padding_slot = PADDING_BLOCK * block_size
    context_lens = torch.where(in_tree, roots[:, None] + visible, 1)
    tree_width = -(-width // TREE_ALIGN) * TREE_ALIGN
    rows = {
        "input_ids": torch.where(in_tree, row_tokens, 0),
        "positions": positions,
        "slot_mapping": torch.where(in_tree, seq_slots.gather(1, roots[:, None] + columns), padding_slot),
        "block_tables": torch.where(in_tree[:, :, None], tables[:, None, :], PADDING_BLOCK).int(),
        "context_lens": context_lens.int(),
        "tree_mask": pad(seen, (0, tree_width - width)),
    }
    # Rows past the batch's trees pad the step to `padded_rows`, as padding rows within a tree do.
    fill = {"slot_mapping": padding_slot, "block_tables": PADDING_BLOCK, "context_lens": 1}
    flat = {name: _padded(value.flatten(0, 1), padded_rows, fill.get(name, 0)) for name, value in rows.items()}
    windows = (_key_windows(seq_slots, keys, roots, in_tree, seen, visible, context_lens, padded_rows, padding_slot)
               if key_windows else (None, None))
    query_start_loc = torch.arange(padded_rows + 1, dtype=torch.int32, device=device)
    return (flat["input_ids"], flat["positions"], query_start_loc, flat["slot_mapping"], flat["block_tables"],
            flat["context_lens"], flat["tree_mask"], *windows, rows["input_ids"], seen, parent_rows, depths, roots,
            seq_slots)


def _key_windows(seq_slots: torch.Tensor, keys: torch.Tensor, roots: torch.Tensor, in_tree: torch.Tensor,
                 seen: torch.Tensor, visible: torch.Tensor, context_lens: torch.Tensor, padded_rows: int,
                 padding_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's gathered key window [padded_rows, window]: its sequence's prefix slots (`seq_slots` [B,
    window] holds every position's), then the slots of the `visible` tree keys it sees (`seen`) in node
    order; and which entries are real keys. Padding rows read the padding slot, their first entry valid."""
    batch, width = in_tree.shape
    valid = keys < _padded(context_lens.flatten(), padded_rows, 1)[:, None]
    prefix = keys < torch.where(in_tree, roots[:, None], 0)[:, :, None]
    rows = torch.where(prefix, seq_slots[:, None, :], padding_slot)
    # The k-th key past the prefix is the row's k-th visible tree key: columns sort the seen ones first.
    columns = torch.arange(width, device=seq_slots.device)
    tree_keys = torch.sort(torch.where(seen, columns, width), dim=-1).values.clamp(max=width - 1)
    at = roots[:, None, None] + tree_keys
    tree_slots = seq_slots.gather(1, at.flatten(1)).view(batch, width, width)
    # Padding rows see no tree key (`visible` 0), so they write the padding slot throughout.
    rows.scatter_(2, (roots[:, None, None] + columns).expand(batch, width, width),
                  torch.where(columns < visible[:, :, None], tree_slots, padding_slot))
    return _padded(rows.flatten(0, 1), padded_rows, padding_slot), valid


def _padded(rows: torch.Tensor, padded_rows: int, fill: int) -> torch.Tensor:
    """`rows` [R, ...] followed by padding rows of `fill` up to `padded_rows`."""
    extra = padded_rows - rows.shape[0]
    if not extra:
        return rows
    return torch.cat([rows, torch.full((extra, *rows.shape[1:]), fill, dtype=rows.dtype, device=rows.device)])
