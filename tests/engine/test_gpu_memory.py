"""`--gpu-memory-utilization`: the KV cache gets what is left of the allowed share of the GPU after what is in
use and the reserve for activations and graphs. torch.cuda.mem_get_info is replaced, so the arithmetic is
checked here without a GPU; tests marked gpu size a real cache."""

from __future__ import annotations

import pytest
import torch

from kilotok.engine.gpu_memory import GIB, describe, plan_kv_cache
from kilotok.errors import InvalidRequestError

DEVICE = torch.device("cuda", 0)


def card(free: int, total: int):
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return free, total
    return mem_get_info, asked


def test_the_cache_takes_the_allowed_share_less_what_is_in_use_and_the_reserve():
    mem_get_info, asked = card(free=70 * GIB, total=80 * GIB)
    plan = plan_kv_cache(DEVICE, 0.9, block_bytes=3 * 2**20, reserve_bytes=2 * GIB + 5, max_blocks=10**6,
                         mem_get_info=mem_get_info)
    # 72 GiB allowed - 10 GiB in use - 2 GiB (+5 bytes) reserved = 60 GiB less 5 bytes: 20479 blocks of 3 MiB.
    assert asked == [DEVICE]
    assert (plan.num_blocks, plan.in_use_bytes, plan.total_bytes) == (20479, 10 * GIB, 80 * GIB)
    assert plan.kv_bytes == 20479 * 3 * 2**20
    half = plan_kv_cache(DEVICE, 0.5, 3 * 2**20, 2 * GIB, 10**6, card(70 * GIB, 80 * GIB)[0])
    assert half.num_blocks == (40 - 10 - 2) * 1024 // 3
    assert plan_kv_cache(DEVICE, 0.5, 3 * 2**20, 2 * GIB, 777, card(70 * GIB, 80 * GIB)[0]).num_blocks == 777
    line = describe(plan, DEVICE, weights_bytes=GIB // 4, block_size=16)
    assert line == ("kilotok: cuda:0 (80.0 GiB): weights 0.25 GiB, in use 10.00 GiB, reserved for activations and "
                    "graphs 2.00 GiB, KV cache 20479 blocks of 16 tokens (60.00 GiB)")


def test_no_room_for_two_blocks_is_refused_with_the_figures():
    mem_get_info, _ = card(free=10 * GIB, total=80 * GIB)
    with pytest.raises(InvalidRequestError, match=r"--gpu-memory-utilization 0.9 leaves no room for the KV cache: of "
                                                  r"80.0 GiB, 70.00 GiB are in use .* 2.00 GiB are kept") as error:
        plan_kv_cache(DEVICE, 0.9, 2**20, 2 * GIB, 10**6, mem_get_info)
    assert error.value.param == "gpu_memory_utilization"


def test_utilization_is_validated_once_in_the_engine_config():
    from kilotok.engine.engine_config import EngineConfig

    assert EngineConfig().gpu_memory_utilization == 0.9
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InvalidRequestError, match="gpu_memory_utilization"):
            EngineConfig(gpu_memory_utilization=bad)


@pytest.mark.gpu
def test_a_cuda_engine_sizes_its_cache_from_free_memory_and_reports_it(monkeypatch, capsys):
    from tests.tiny_engine import greedy, random_reference, tiny_llm

    llm = tiny_llm(monkeypatch, random_reference(), device="cuda", kv_cache_blocks=None, progress=True,
                   gpu_memory_utilization=0.5)
    free, total = torch.cuda.mem_get_info()
    cache_bytes = sum(layer.self_attn.k_cache.nbytes * 2 for layer in llm.engine.runner.model.layers)
    # The tiny model would fit millions of blocks: the cache stops at what max_num_seqs sequences can fill.
    assert llm.engine.block_manager.num_blocks == 32 * 33 + 1 and cache_bytes < 0.5 * total  # 129 tokens: 33 blocks
    assert "KV cache" in capsys.readouterr().err
    assert len(llm.generate({"prompt_token_ids": [1, 2, 3]}, greedy(4))[0].token_ids) == 4
