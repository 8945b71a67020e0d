"""Writes a step's new keys and values into the paged cache: one program per new token copies its K and V
rows (every KV head) to the token's slot, in one launch for both caches."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilotok.kernels.triton.pdl import launch_options, pdl_enabled, release_dependents, wait_for_producer


@triton.jit
def _store_kernel(k, v, k_cache, v_cache, slot_mapping, k_row_stride, k_head_stride, v_row_stride, v_head_stride,
                  NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, ROW_PAD: tl.constexpr, USE_PDL: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, ROW_PAD)
    heads = offsets // HEAD_DIM
    dims = offsets % HEAD_DIM
    in_row = offsets < NUM_KV_HEADS * HEAD_DIM
    wait_for_producer(USE_PDL)
    slot = tl.load(slot_mapping + token).to(tl.int64)
    keys = tl.load(k + token * k_row_stride + heads * k_head_stride + dims, mask=in_row)
    values = tl.load(v + token * v_row_stride + heads * v_head_stride + dims, mask=in_row)
    release_dependents(USE_PDL)
    destination = slot * NUM_KV_HEADS * HEAD_DIM + offsets
    tl.store(k_cache + destination, keys.to(k_cache.dtype.element_ty), mask=in_row)
    tl.store(v_cache + destination, values.to(v_cache.dtype.element_ty), mask=in_row)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, pdl: bool) -> None:
    """k, v [T, Hkv, D] (last dimension contiguous) into caches [blocks, block_size, Hkv, D] (contiguous)
    at flat slots `slot_mapping` [T]."""
    tokens, num_kv_heads, head_dim = k.shape
    if tokens == 0:
        return
    k = k if k.stride(2) == 1 else k.contiguous()
    v = v if v.stride(2) == 1 else v.contiguous()
    use_pdl = pdl_enabled(pdl, k.device)
    _store_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, ROW_PAD=triton.next_power_of_2(num_kv_heads * head_dim),
        USE_PDL=use_pdl, **launch_options(use_pdl),
    )
