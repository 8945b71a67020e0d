"""How a model splits over ranks: head, KV-head, width and vocabulary slices, KV heads replicated when
there are fewer than ranks, expert groups, and clear errors naming the dimension and the sizes that work."""

from __future__ import annotations

import pytest

from kilotok.errors import InvalidRequestError, ModelFormatError
from kilotok.models.config import ModelConfig, MoeConfig
from kilotok.parallel.layout import ParallelConfig, Span, rank_layout


def _config(**fields) -> ModelConfig:
    base = dict(architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=2,
                num_heads=9, num_kv_heads=3, head_dim=64)
    return ModelConfig(**{**base, **fields})


def test_default_model_shapes_at_tensor_parallel_3():
    layouts = [rank_layout(_config(), ParallelConfig(3), rank) for rank in range(3)]
    assert [layout.heads for layout in layouts] == [Span(0, 3), Span(3, 3), Span(6, 3)]
    assert [layout.kv_heads for layout in layouts] == [Span(0, 1), Span(1, 1), Span(2, 1)]
    assert [layout.vocab.start for layout in layouts] == [0, 16384, 32768]
    assert {layout.intermediate.size for layout in layouts} == {512}


def test_kv_heads_are_replicated_on_the_ranks_whose_query_heads_use_them():
    # 9 query heads at tp 9: heads 0-2 read KV head 0, 3-5 KV head 1, 6-8 KV head 2.
    config = _config(vocab_size=99, intermediate_size=18)
    kv = [rank_layout(config, ParallelConfig(9), rank).kv_heads.start for rank in range(9)]
    assert kv == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_uneven_heads_name_the_dimension_and_the_sizes_that_work():
    with pytest.raises(ModelFormatError, match=r"attention heads \(num_heads\) of 9 .* 2; sizes that work: 1, 3, 9"):
        rank_layout(_config(), ParallelConfig(2), 0)


def test_kv_heads_that_neither_split_nor_replicate_are_refused():
    with pytest.raises(ModelFormatError, match="4 KV heads .* tensor_parallel_size 6"):
        rank_layout(_config(num_heads=12, num_kv_heads=4, vocab_size=96, intermediate_size=96), ParallelConfig(6), 0)


def test_experts_go_to_groups_and_are_cut_by_width_inside_a_group():
    moe = MoeConfig(num_experts=8, num_experts_per_tok=2, expert_intermediate_size=64, layers=(0, 1))
    config = _config(num_heads=8, num_kv_heads=4, moe=moe)
    layouts = [rank_layout(config, ParallelConfig(4, 2), rank) for rank in range(4)]
    assert [layout.experts for layout in layouts] == [Span(0, 4), Span(0, 4), Span(4, 4), Span(4, 4)]
    assert [layout.expert_intermediate for layout in layouts] == [Span(0, 32), Span(32, 32)] * 2
    with pytest.raises(ModelFormatError, match=r"experts \(num_experts\) of 8 .* expert_parallel_size 3"):
        rank_layout(_config(num_heads=12, moe=moe), ParallelConfig(3, 3), 0)


def test_expert_parallel_size_must_divide_tensor_parallel_size():
    with pytest.raises(InvalidRequestError, match="expert_parallel_size 2 must divide tensor_parallel_size 3"):
        ParallelConfig(3, 2)
    with pytest.raises(InvalidRequestError, match="tensor_parallel_size must be a positive integer"):
        ParallelConfig(0)
