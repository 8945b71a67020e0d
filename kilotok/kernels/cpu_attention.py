"""Decode attention as a C++ op for the CPU (csrc/decode_attention.cpp), behind `paged_attention` for
decode rows: it reads each row's valid keys straight from the paged cache instead of gathering, masking
and softmaxing a whole padded window as the tensor-op reference does (`decode_attention` in
kernels/attention.py), which is the same math. It spreads (row, KV head) pairs over threads, so a batch of
many rows, or a draft tree, costs little more than one row.

kilotok builds it the first time it is needed (kilotok/native.py). Where the build fails, the processor
lacks AVX-512, or KILOTOK_CPU_ATTENTION=0 asks for the reference (to compare the two),
`cpu_decode_attention_available()` is False and the reference runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from kilotok.native import load_cpu_ops

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"


@functools.cache
def cpu_decode_attention_available() -> bool:
    """Build and load the op once per process; False, with one line on stderr, where it cannot run."""
    if not load_cpu_ops(SOURCE, "kilotok_attention", "CPU decode-attention kernel", "KILOTOK_CPU_ATTENTION",
                        "decode attention runs as tensor ops",
                        lambda: torch.ops.kilotok.decode_attention_cpu_supported(), "AVX-512"):
        return False
    torch.library.register_fake("kilotok::gathered_decode_attention")(lambda q, *_: torch.empty_like(q))
    return True


def cpu_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         kv_gather_index: torch.Tensor, kv_valid: torch.Tensor, scale: float) -> torch.Tensor:
    """q [R, Hq, D], caches [blocks, block_size, Hkv, D] (float32 or bfloat16), a window of flat cache slots
    [R, L] and which of them each row sees [R, L] -> [R, Hq, D] in q's dtype, computed in float32
    (`cpu_decode_attention_available()` must be True)."""
    out = torch.ops.kilotok.gathered_decode_attention(q.float().contiguous(), k_cache, v_cache,
                                                      kv_gather_index.contiguous(), kv_valid.contiguous(), scale)
    return out.to(q.dtype)
