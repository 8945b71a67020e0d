"""The Triton attention kernels registered as torch ops, so that `torch.compile` treats each launch as one
opaque call with a known output shape, as it does the PyTorch reference (kernels/attention.py)."""

from __future__ import annotations

import torch

from kilotok.kernels.triton import attention_decode, attention_prefill, kv_store

store_kv = torch.library.custom_op("kilotok::triton_store_kv", mutates_args=("k_cache", "v_cache"))(
    kv_store.store_kv)

paged_decode_attention = torch.library.custom_op("kilotok::triton_paged_decode", mutates_args=())(
    attention_decode.paged_decode_attention)
paged_decode_attention.register_fake(lambda q, *_: torch.empty_like(q, memory_format=torch.contiguous_format))

paged_prefill_attention = torch.library.custom_op("kilotok::triton_paged_prefill", mutates_args=())(
    attention_prefill.paged_prefill_attention)
paged_prefill_attention.register_fake(lambda q, *_: torch.empty_like(q, memory_format=torch.contiguous_format))
