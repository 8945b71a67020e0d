"""Tensor and expert parallelism on random small Llama 4 and Mixtral models, with ranks spawned by the
engine over gloo: greedy output equals the single-process output token for token, also with n-gram
speculative decoding on top (every rank follows rank 0's verify forwards and KV copies)."""

from __future__ import annotations

import pytest

from kilotok.speculative.config import SpecConfig
from tests.parallel.tiny_models import eagle3_head, greedy_ids, llama4_folder, mixtral_folder

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    folder = mixtral_folder(tmp_path_factory.mktemp("mixtral"))
    return folder, greedy_ids(folder)


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    folder = llama4_folder(tmp_path_factory.mktemp("llama4"))
    return folder, greedy_ids(folder)


def test_mixtral_expert_parallel_equals_one_process(mixtral):
    folder, expected = mixtral
    assert greedy_ids(folder, tensor_parallel_size=2, expert_parallel_size=2) == expected


def test_llama4_expert_parallel_equals_one_process(llama4):
    folder, expected = llama4
    assert greedy_ids(folder, tensor_parallel_size=2, expert_parallel_size=2) == expected


@pytest.mark.parametrize("method", ["ngram", "eagle3"])
def test_llama4_speculation_under_tensor_parallel_equals_plain_decoding(llama4, tmp_path, method):
    """Expert parallel 1: every rank holds every expert, cut by width like an MLP. The EAGLE-3 head runs
    on rank 0 alone."""
    folder, expected = llama4
    spec = SpecConfig(method="ngram") if method == "ngram" else \
        SpecConfig(method="eagle3", draft=str(eagle3_head(folder, tmp_path / "head")))
    assert greedy_ids(folder, tensor_parallel_size=2, spec=spec) == expected
