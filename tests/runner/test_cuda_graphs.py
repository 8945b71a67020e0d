"""CUDA graphs of the decode step (runner/cuda_graphs.py). On the CPU a stand-in graph records the captured
call and replays it into the same output tensors, as a real graph does: that checks the static-buffer
plumbing (padded inputs copied in, outputs read back, the captured size chosen, sizes outside the set run
eagerly). On a GPU (`pytest -m gpu`) real graphs are captured and compared with the eager step."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.runner import model_runner
from kilotok.runner.cuda_graphs import DecodeGraphs
from tests.tiny_engine import VOCAB, greedy, mixed_prompts, random_reference, tiny_llm

MAX_BLOCKS = 5
BLOCK_SIZE = 4


class ReplayedCall:
    """A graph stand-in: capturing runs the call once and keeps its outputs; replaying runs it again and
    writes the results into those same tensors, as a replayed CUDA graph overwrites its outputs."""

    replays = 0

    def __init__(self, call, pool) -> None:
        self.call = call
        self.outputs = call()

    def replay(self) -> None:
        ReplayedCall.replays += 1
        for kept, new in zip(self.outputs, self.call(), strict=True):
            if kept is not None:
                kept.copy_(new)


def reads_every_input(input_ids, positions, meta: AttentionMetadata):
    """A stand-in decode step whose output depends on every input a real step reads, row by row."""
    per_row = (input_ids * 7 + positions * 3 + meta.slot_mapping + meta.context_lens * 11
               + (meta.block_tables.long() * torch.arange(1, MAX_BLOCKS + 1)).sum(dim=1))
    logits = per_row[:, None].float() + torch.arange(VOCAB)
    return logits, -logits[:, :2]


def step(rows: int, seed: int):
    generator = torch.Generator().manual_seed(seed)

    def draw(high, *shape, dtype=torch.int64):
        return torch.randint(1, high, shape, generator=generator, dtype=dtype)

    meta = AttentionMetadata(slot_mapping=draw(50, rows), block_tables=draw(12, rows, MAX_BLOCKS, dtype=torch.int32),
                             context_lens=draw(20, rows, dtype=torch.int32),
                             query_start_loc=torch.arange(rows + 1, dtype=torch.int32), decode_rows=True)
    return draw(VOCAB, rows), draw(30, rows), meta


def graphs(sizes=(1, 2, 4, 8)) -> DecodeGraphs:
    return DecodeGraphs(reads_every_input, sizes, MAX_BLOCKS, 0, BLOCK_SIZE, torch.device("cpu"),
                        capture=ReplayedCall, progress=False)


def test_a_replay_reads_this_steps_inputs_into_the_graphs_own_outputs():
    captured = graphs()
    first = captured.run(*step(4, seed=1))
    kept = first[0]
    for seed, rows in ((2, 4), (3, 2), (4, 8), (5, 4)):
        inputs = step(rows, seed)
        logits, features = captured.run(*inputs)
        expected_logits, expected_features = reads_every_input(*inputs)
        assert torch.equal(logits, expected_logits) and torch.equal(features, expected_features)
    assert captured.run(*step(4, seed=6))[0] is kept  # a graph's outputs are its own, overwritten in place


def test_sizes_pad_to_the_next_captured_one_and_others_run_eagerly():
    captured = graphs()
    assert [captured.size_for(rows) for rows in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    assert captured.run(*step(3, seed=1)) is None  # not padded: no graph of that size
    assert captured.run(*step(16, seed=1)) is None
    tree = step(4, seed=1)
    tree[2].tree_mask = torch.ones(4, 2, dtype=torch.bool)
    assert captured.run(*tree) is None  # draft-tree rows go to the verification graphs
    ids, positions, meta = step(4, seed=1)
    meta.block_tables = meta.block_tables[:, :3]
    with pytest.raises(ValueError, match="3 columns; the captured graphs read 5"):
        captured.run(ids, positions, meta)


def reads_the_tree_too(input_ids, positions, meta: AttentionMetadata):
    logits, features = reads_every_input(input_ids, positions, meta)
    tree = meta.tree_mask.long() * torch.arange(1, meta.tree_mask.shape[1] + 1)
    return logits + tree.sum(dim=1, keepdim=True), features


def with_tree(rows: int, width: int, seed: int):
    ids, positions, meta = step(rows, seed)
    generator = torch.Generator().manual_seed(seed)
    meta.tree_mask = torch.rand(rows, width, generator=generator) < 0.5
    return ids, positions, meta


def test_verification_graphs_pad_narrower_trees_with_invisible_columns():
    captured = DecodeGraphs(reads_the_tree_too, (1, 2, 4), MAX_BLOCKS, 0, BLOCK_SIZE, torch.device("cpu"),
                            capture=ReplayedCall, progress=False, tree_width=6)
    captured.run(*with_tree(4, 6, seed=1))  # fills every column, so a narrower tree must clear the rest
    for rows, width, seed in ((4, 3, 2), (2, 6, 3), (4, 1, 4)):
        ids, positions, meta = with_tree(rows, width, seed)
        padded = AttentionMetadata(**{**vars(meta), "tree_mask": torch.zeros(rows, 6, dtype=torch.bool)})
        padded.tree_mask[:, :width] = meta.tree_mask
        assert torch.equal(captured.run(ids, positions, meta)[0], reads_the_tree_too(ids, positions, padded)[0])
    assert captured.run(*with_tree(4, 7, seed=5)) is None  # wider than captured: eager
    assert captured.run(*step(4, seed=6)) is None  # no tree: the plain decode graphs' rows


def test_triton_decode_through_captured_graphs_gives_the_eager_greedy_tokens(monkeypatch):
    pytest.importorskip("triton")
    reference = random_reference()
    prompts = mixed_prompts(5, seed=4)
    params = greedy(6)
    expected = [out.token_ids for out in tiny_llm(monkeypatch, reference, backend="torch").generate(prompts, params)]
    llm = tiny_llm(monkeypatch, reference, backend="triton", max_model_len=40)
    runner = llm.engine.runner

    def no_window(*args):
        raise AssertionError("the Triton backend reads the block table: no gathered key window")

    monkeypatch.setattr(model_runner, "decode_key_window", no_window)
    # Graphs up to 2 rows: batches of 3-5 pad to 4 or 8 and run eagerly, 1 and 2 replay graphs.
    assert runner.capture_decode_graphs(2, capture=ReplayedCall, progress=False) == [1, 2]
    ReplayedCall.replays = 0
    got = [out.token_ids for out in llm.generate(prompts, params)]
    alone = llm.generate(prompts[0], params)[0].token_ids
    assert got == expected and alone == expected[0]
    assert ReplayedCall.replays >= 5  # the single prompt's decode steps replayed a graph


def test_graphs_need_a_backend_that_reads_the_block_table(monkeypatch):
    llm = tiny_llm(monkeypatch, random_reference(), backend="torch")
    with pytest.raises(ValueError, match="need the Triton backend"):
        llm.engine.runner.capture_decode_graphs(4, capture=ReplayedCall, progress=False)


def test_triton_verification_through_captured_graphs_gives_the_torch_backends_tokens(monkeypatch):
    pytest.importorskip("triton")
    from kilotok.speculative.config import SpecConfig
    from tests.tiny_engine import RandomTreeDrafter, use_drafter

    reference = random_reference()
    prompts = mixed_prompts(3, seed=6)
    params = greedy(5)
    settings = {"max_model_len": 40, "spec": SpecConfig("ngram", depth=3), "max_num_seqs": 2}
    expected = tiny_llm(monkeypatch, reference, backend="torch", **settings).generate(prompts, params)
    llm = tiny_llm(monkeypatch, reference, backend="triton", **settings)
    use_drafter(llm, RandomTreeDrafter(VOCAB, max_nodes=4, seed=0))
    runner = llm.engine.runner
    runner.capture_decode_graphs(2, capture=ReplayedCall, progress=False, verify=(2 * 5, 16))
    replayed = []
    monkeypatch.setattr(runner._verify_graphs.graphs[8], "replay", lambda: replayed.append(8) or
                        ReplayedCall.replay(runner._verify_graphs.graphs[8]))
    got = llm.generate(prompts, params)
    assert [out.token_ids for out in got] == [out.token_ids for out in expected]
    assert replayed and llm.engine.spec_stats.drafted_tokens > llm.engine.spec_stats.accepted_tokens > 0


@pytest.mark.gpu
def test_captured_cuda_graphs_give_the_eager_greedy_tokens(monkeypatch):
    reference = random_reference()
    prompts = mixed_prompts(6, seed=5)
    params = greedy(8)
    settings = {"device": "cuda", "backend": "triton", "max_num_seqs": 4}
    eager = tiny_llm(monkeypatch, reference, cuda_graphs=False, **settings)
    assert eager.engine.runner._graphs is None
    expected = [out.token_ids for out in eager.generate(prompts, params)]
    llm = tiny_llm(monkeypatch, reference, **settings)
    assert llm.engine.runner._graphs.sizes == [1, 2, 4]
    assert [out.token_ids for out in llm.generate(prompts, params)] == expected
    assert [out.token_ids for out in llm.generate(prompts[:3], params)] == expected[:3]


@pytest.mark.gpu
def test_speculative_steps_through_captured_cuda_graphs_give_the_eager_tokens(monkeypatch):
    from kilotok.speculative.config import SpecConfig

    reference = random_reference()
    prompts = mixed_prompts(6, seed=7)
    params = greedy(8)
    settings = {"device": "cuda", "backend": "triton", "max_num_seqs": 4, "spec": SpecConfig("ngram", depth=3)}
    expected = [out.token_ids for out in tiny_llm(monkeypatch, reference, cuda_graphs=False, **settings)
                .generate(prompts, params)]
    llm = tiny_llm(monkeypatch, reference, **settings)
    assert llm.engine.runner._verify_graphs is not None
    assert [out.token_ids for out in llm.generate(prompts, params)] == expected
    assert llm.engine.spec_stats.accepted_tokens > 0
