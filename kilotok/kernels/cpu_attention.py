"""Attention as C++ ops for the CPU, behind `paged_attention` (kernels/attention.py) for a model on the
CPU, the same math as its tensor-op references:

- decode rows (csrc/decode_attention.cpp): each row reads its valid keys straight from the paged cache
  instead of gathering, masking and softmaxing a whole padded window as `decode_attention` does; (row, KV
  head) pairs spread over threads, so a batch of many rows, or a draft tree, costs little more than one;
- prompts (csrc/prefill_attention.cpp): every sequence's new tokens over the block table in one call,
  groups of 16 (token, query head) pairs spread over threads, instead of `paged_attention_reference`'s
  SDPA call per sequence and layer.

kilotok builds both the first time they are needed (kilotok/native.py). Where the build fails, the
processor lacks AVX-512, or KILOTOK_CPU_ATTENTION=0 asks for the references (to compare the two),
`cpu_attention_available()` is False and the references run.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from kilotok.native import load_cpu_ops

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("decode_attention.cpp", "prefill_attention.cpp")]


@functools.cache
def cpu_attention_available() -> bool:
    """Build and load the ops once per process; False, with one line on stderr, where they cannot run."""
    if not load_cpu_ops(SOURCES, "kilotok_attention", "CPU attention kernels", "KILOTOK_CPU_ATTENTION",
                        "attention runs as tensor ops", lambda: torch.ops.kilotok.attention_cpu_supported(),
                        "AVX-512"):
        return False
    torch.library.register_fake("kilotok::gathered_decode_attention")(lambda q, *_: torch.empty_like(q))
    torch.library.register_fake("kilotok::paged_prefill_attention")(lambda q, *_: torch.empty_like(q))
    return True


def cpu_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         kv_gather_index: torch.Tensor, kv_valid: torch.Tensor, scale: float) -> torch.Tensor:
    """q [R, Hq, D], caches [blocks, block_size, Hkv, D] (float32 or bfloat16), a window of flat cache slots
    [R, L] and which of them each row sees [R, L] -> [R, Hq, D] in q's dtype, computed in float32
    (`cpu_attention_available()` must be True)."""
    out = torch.ops.kilotok.gathered_decode_attention(q.float().contiguous(), k_cache, v_cache,
                                                      kv_gather_index.contiguous(), kv_valid.contiguous(), scale)
    return out.to(q.dtype)


def cpu_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                          context_lens: torch.Tensor, query_start_loc: torch.Tensor, scale: float,
                          attention_chunk_size: int = 0) -> torch.Tensor:
    """q [T, Hq, D]: sequence b's new tokens are rows query_start_loc[b]:query_start_loc[b + 1], the last of
    its context_lens[b] cached tokens, each seeing the keys up to its own position (within its chunk of
    positions when `attention_chunk_size` > 0) -> [T, Hq, D] in q's dtype, computed in float32
    (`cpu_attention_available()` must be True)."""
    out = torch.ops.kilotok.paged_prefill_attention(
        q.float().contiguous(), k_cache, v_cache, block_tables.int().contiguous(), context_lens.int(),
        query_start_loc.int(), scale, attention_chunk_size)
    return out.to(q.dtype)
