"""Acceptance's K/V moves against the cache a plain decode would leave: nodes written where the verify
inputs put them, moved, then read back position by position through each sequence's block table."""

from __future__ import annotations

import torch

from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence
from kilotok.speculative.tree import DraftTree, DraftTrees
from kilotok.speculative.verify import accept_greedy, accept_sampled
from kilotok.speculative.verify_inputs import build_verify_inputs, kv_moves
from tests.host_tensors import DEVICE, HostTensors

BLOCK = 4


def test_each_row_reads_its_prefix_then_the_tree_keys_it_sees():
    """By hand. Sequence 0: 6 tokens in blocks [2, 3, 5] of 4 slots, root at position 5 (slot 13), nodes
    0 (under the root, position 6, slot 14), 1 (under node 0, position 7, slot 15) and 2 (under the root,
    written at position 8: slot 20, at depth 1: RoPE position 6). Sequence 1: 2 tokens in block [1], no
    tree: its root, then padding rows (slot 0, one key), as are the rows past the batch."""
    seqs = [Sequence(list(range(6)), SamplingParams(), block_table=[2, 3, 5]),
            Sequence([7, 9], SamplingParams(), block_table=[1])]
    trees = DraftTrees.from_trees([DraftTree([30, 31, 32], [-1, 0, -1]), DraftTree()])
    batch = build_verify_inputs(seqs, trees, 4, 10, BLOCK, max_blocks=3, device=torch.device("cpu"))
    ids, positions, meta = batch.input_ids, batch.positions, batch.meta
    assert ids.tolist() == [5, 30, 31, 32, 9, 0, 0, 0, 0, 0]
    assert positions.tolist() == [5, 6, 7, 6, 1, 0, 0, 0, 0, 0]
    assert meta.slot_mapping.tolist() == [13, 14, 15, 20, 5, 0, 0, 0, 0, 0]
    assert meta.context_lens.tolist() == [6, 7, 8, 7, 2, 1, 1, 1, 1, 1]
    prefix = [8, 9, 10, 11, 12]
    windows = [prefix + [13], prefix + [13, 14], prefix + [13, 14, 15], prefix + [13, 20], [4, 5]] + [[0]] * 5
    assert [index[valid].tolist() for index, valid in zip(meta.kv_gather_index, meta.kv_valid, strict=True)] == windows
    assert (meta.kv_gather_index[~meta.kv_valid] == 0).all()
    assert meta.tree_mask[:, :4].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1],
                                                    [1, 0, 0, 0]] + [[0] * 4] * 5
    assert not meta.tree_mask[:, 4:].any()
    assert meta.block_tables.tolist() == [[2, 3, 5]] * 4 + [[1, 0, 0]] + [[0, 0, 0]] * 5
    # What acceptance reads: each row's parent row and depth.
    assert batch.trees.parents.tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert batch.trees.depths.tolist() == [[0, 1, 2, 1], [0, 0, 0, 0]]
    assert batch.roots.tolist() == [5, 1]
    # For kernels that read the block table: the same rows, without the windows.
    bare = build_verify_inputs(seqs, trees, 4, 10, BLOCK, max_blocks=3, device=torch.device("cpu"),
                               key_windows=False).meta
    assert bare.kv_gather_index is None and bare.kv_valid is None
    assert torch.equal(bare.tree_mask, meta.tree_mask) and torch.equal(bare.context_lens, meta.context_lens)


def test_accepted_nodes_end_up_at_the_positions_of_their_depths():
    # Roots at positions 5 and 6: sequence 0's tree crosses from block 3 into block 5.
    seqs = [Sequence(list(range(6)), SamplingParams(), block_table=[2, 3, 5]),
            Sequence(list(range(7)), SamplingParams(), block_table=[1, 4, 6])]
    trees = [DraftTree([10, 11, 12, 13, 14], [-1, -1, 1, 2, 0]), DraftTree.chain([20, 21])]
    accepted_nodes = [[1, 2, 3], [0]]
    width = 6
    batch = build_verify_inputs(seqs, DraftTrees.from_trees(trees), width, 16, BLOCK, max_blocks=4,
                                device=torch.device("cpu"))
    cache = torch.full((7 * BLOCK,), -1, dtype=torch.int64)
    cache[batch.meta.slot_mapping] = batch.input_ids
    path_rows = torch.tensor([[node + 1 for node in nodes] + [0] * (width - 1 - len(nodes))
                              for nodes in accepted_nodes])
    counts = torch.tensor([len(nodes) for nodes in accepted_nodes])
    acceptance = batch.trees.acceptance(counts, path_rows, torch.tensor([15, 22]))
    moves = kv_moves(batch.roots, batch.slots, acceptance)
    cache[moves[1]] = cache[moves[0]].clone()
    for seq, tree, nodes in zip(seqs, trees, accepted_nodes, strict=True):
        root = len(seq) - 1
        kept = [cache[seq.block_table[p // BLOCK] * BLOCK + p % BLOCK].item()
                for p in range(root, root + len(nodes) + 1)]
        assert kept == [seq.token_ids[-1]] + [tree.tokens[node] for node in nodes]


@torch.no_grad()
def test_acceptance_and_its_moves_build_nothing_on_the_host():
    """What a captured speculative step would run after the target's forward, on a device."""
    seqs = [Sequence(list(range(n)), SamplingParams(), block_table=[1, 2]) for n in (5, 9, 3)]
    trees = DraftTrees.from_trees([DraftTree([7, 8, 9], [-1, 0, 0]), DraftTree.chain([4]), DraftTree()], DEVICE)
    batch = build_verify_inputs(seqs, trees, 4, 16, BLOCK, max_blocks=4, device=DEVICE)
    logits = torch.empty(3, 4, 11, device=DEVICE)
    with HostTensors() as audit:
        acceptance = accept_greedy(batch.trees, logits.argmax(dim=-1))
        moves = kv_moves(batch.roots, batch.slots, acceptance)
        sampled = accept_sampled(batch.trees, logits.softmax(dim=-1), [None] * 3)
    assert audit.ops == []
    assert {t.device for t in (*vars(acceptance).values(), *vars(sampled).values(), *moves)} == {DEVICE}
    assert moves[0].shape == moves[1].shape == (3 * 3,)
