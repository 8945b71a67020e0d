"""How many KV-cache blocks fit on a GPU (`--gpu-memory-utilization`), and the start-up line that says so.

kilotok may fill `utilization` of the card's whole memory. What is already in use when the cache is sized
(the weights, the CUDA context, other processes) counts against that, and so does a reserve for what the
steps allocate later: the activations of the largest prefill and of the largest decode step, measured by
running both once, plus the CUDA graphs' pool, which holds about one decode step's activations. The cache
gets the rest, up to what `max_num_seqs` sequences of the whole context can fill at once: beyond that,
blocks would only hold prefixes for the prefix cache, and a small model on a large card would get millions
of blocks for the block manager to track on the host. On the CPU `kv_cache_gb` sizes the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kilotok.errors import InvalidRequestError
from kilotok.kernels.attention import KEY_WINDOW_ALIGN
from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.runner.model_runner import ModelRunner
from kilotok.runner.step_inputs import PADDING_BLOCK, warm_up_rows

GIB = 2**30
SLACK_BYTES = 256 * 2**20
"""Beyond the measured peaks: cuBLAS workspaces, the caching allocator's fragmentation, sampling."""

MemGetInfo = Callable[[torch.device], tuple[int, int]]
"""(free bytes, total bytes) of a device: torch.cuda.mem_get_info, or a stand-in in tests."""


@dataclass(frozen=True)
class GpuMemoryPlan:
    total_bytes: int
    in_use_bytes: int
    """Taken when the cache was sized: weights, the CUDA context, other processes."""
    reserve_bytes: int
    """Kept for activations and CUDA graphs."""
    num_blocks: int
    block_bytes: int

    @property
    def kv_bytes(self) -> int:
        return self.num_blocks * self.block_bytes


def plan_kv_cache(device: torch.device, utilization: float, block_bytes: int, reserve_bytes: int,
                  max_blocks: int, mem_get_info: MemGetInfo = torch.cuda.mem_get_info) -> GpuMemoryPlan:
    """The KV blocks that fit in `utilization` of the device's memory after what is in use and the reserve,
    at most `max_blocks`."""
    free, total = mem_get_info(device)
    in_use = total - free
    budget = int(total * utilization) - in_use - reserve_bytes
    num_blocks = budget // block_bytes
    if num_blocks < 2:
        raise InvalidRequestError(
            f"--gpu-memory-utilization {utilization} leaves no room for the KV cache: of {total / GIB:.1f} GiB, "
            f"{in_use / GIB:.2f} GiB are in use (weights, other processes) and {reserve_bytes / GIB:.2f} GiB are "
            "kept for activations and CUDA graphs; raise it, or lower --max-num-batched-tokens or the batch size",
            param="gpu_memory_utilization")
    return GpuMemoryPlan(total, in_use, reserve_bytes, min(num_blocks, max_blocks), block_bytes)


def describe(plan: GpuMemoryPlan, device: torch.device, weights_bytes: int, block_size: int) -> str:
    """The start-up line."""
    return (f"kilotok: {device} ({plan.total_bytes / GIB:.1f} GiB): weights {weights_bytes / GIB:.2f} GiB, "
            f"in use {plan.in_use_bytes / GIB:.2f} GiB, reserved for activations and graphs "
            f"{plan.reserve_bytes / GIB:.2f} GiB, KV cache {plan.num_blocks} blocks of {block_size} tokens "
            f"({plan.kv_bytes / GIB:.2f} GiB)")


@torch.inference_mode()
def measure_step_peaks(runner: ModelRunner, decode_rows: int, prefill_tokens: int) -> int:
    """The bytes the largest decode step and the largest prefill allocate beyond what is held, summed
    (a graph pool keeps one decode step's worth while prefills run). Padding inputs: every row writes and
    reads the padding block, so `runner` needs only a two-block cache."""
    device = runner.device
    peaks = []
    for forward in (_decode_forward(runner, decode_rows), _prefill_forward(runner, prefill_tokens)):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        forward()
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - held)
    torch.cuda.empty_cache()
    return sum(peaks) + SLACK_BYTES


def _decode_forward(runner: ModelRunner, rows: int) -> Callable[[], object]:
    window = KEY_WINDOW_ALIGN if runner.gathers_key_window else 0
    inputs = warm_up_rows(rows, runner.block_size, runner.max_blocks_per_seq, window, runner.device)
    return lambda: runner.decode_rows(*inputs)


def _prefill_forward(runner: ModelRunner, tokens: int) -> Callable[[], object]:
    device = runner.device
    meta = AttentionMetadata(
        slot_mapping=torch.full((tokens,), PADDING_BLOCK * runner.block_size, dtype=torch.int64, device=device),
        block_tables=torch.full((1, runner.max_blocks_per_seq), PADDING_BLOCK, dtype=torch.int32, device=device),
        context_lens=torch.tensor([tokens], dtype=torch.int32, device=device),
        query_start_loc=torch.tensor([0, tokens], dtype=torch.int32, device=device),
    )
    ids, positions = (torch.zeros(tokens, dtype=torch.int64, device=device) for _ in range(2))
    model = runner.model
    return lambda: model.compute_logits(model(ids, positions, meta)[0][-1:])
