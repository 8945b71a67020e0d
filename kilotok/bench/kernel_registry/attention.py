"""Registry entries for attention over the paged KV cache: decode rows (grouped-query heads over the block
table), the rows of speculative draft trees being verified (a tree mask), and
prefill (causal; chunked-local on Llama 4's layers).

Each sequence holds `model.context` keys in blocks of BLOCK_SIZE drawn in random order over the cache (block
0 is padding, as in the engine). The references are the engine's graph-friendly ones: decode reads a gathered
key window (kernels/attention.py's `decode_attention`, what a compiled decode step runs), prefill gathers the
sequence's keys and runs SDPA under the causal (and chunk) mask. The Triton kernels read the block table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kilotok.bench.kernel_registry.base import BenchKernel, KernelCall, ModelShape, Workload, element_size, random
from kilotok.kernels.attention import KEY_WINDOW_ALIGN, chunked_window_mask, decode_attention

BLOCK_SIZE = 16
TREE_NODES = 8
"""Nodes per verified draft tree (root included): 8 rows are one tree, 64 rows eight sequences' trees."""


def _paged_cache(model: ModelShape, sequences: int, device: torch.device):
    """(k_cache, v_cache, block_tables [S, blocks] int32, slots [S, context] int64: each key's flat slot)."""
    blocks = math.ceil(model.context / BLOCK_SIZE)
    order = torch.randperm(sequences * blocks, device=device) + 1
    tables = order.view(sequences, blocks).to(torch.int32)
    shape = (sequences * blocks + 1, BLOCK_SIZE, model.kv_heads, model.head_dim)
    k_cache, v_cache = random(*shape, device=device), random(*shape, device=device)
    positions = torch.arange(model.context, device=device)
    slots = tables[:, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE
    return k_cache, v_cache, tables, slots


def _window(slots: torch.Tensor) -> torch.Tensor:
    """Rows of key slots padded (with slot 0, masked off) to the reference's window alignment."""
    width = math.ceil(slots.shape[1] / KEY_WINDOW_ALIGN) * KEY_WINDOW_ALIGN
    return F.pad(slots, (0, width - slots.shape[1]))


def _decode_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    """`tokens` sequences decoding one token each."""
    k_cache, v_cache, tables, slots = _paged_cache(model, tokens, device)
    window = _window(slots)
    valid = (torch.arange(window.shape[1], device=device) < model.context).expand(tokens, -1)
    context_lens = torch.full((tokens,), model.context, dtype=torch.int32, device=device)
    q = random(tokens, model.heads, model.head_dim, device=device)
    return KernelCall((q, k_cache, v_cache, tables, context_lens, window, valid),
                      {"scale": model.head_dim**-0.5, "chunk": model.attention_chunk})


def _decode_reference(q, k_cache, v_cache, block_tables, context_lens, window, valid, scale, chunk):
    if chunk:
        valid = chunked_window_mask(valid, chunk)
    return decode_attention(q, k_cache, v_cache, window, valid, scale)


def _decode_kernel(q, k_cache, v_cache, block_tables, context_lens, window, valid, scale, chunk, pdl=False):
    from kilotok.kernels.triton import ops  # Triton is an optional extra: imported on first use

    return ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, None, scale, chunk, pdl)


def tree_rows(tokens: int) -> tuple[int, int]:
    """(sequences, nodes per tree) for `tokens` verified rows, rounded up to whole trees."""
    nodes = min(tokens, TREE_NODES)
    return math.ceil(tokens / nodes), nodes


def _random_tree(nodes: int) -> torch.Tensor:
    """The ancestor-or-self mask [nodes, nodes] bool of a tree whose node j > 0 hangs below a random earlier
    node."""
    seen = torch.eye(nodes, dtype=torch.bool)
    for node in range(1, nodes):
        seen[node] |= seen[int(torch.randint(node, ()))]
    return seen


def _tree_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    """Each sequence's cached prefix then its draft tree's keys (tree key j at position prefix + j), as
    speculative/verify_inputs.py lays them out; one row per tree node."""
    sequences, nodes = tree_rows(tokens)
    prefix = model.context - nodes
    k_cache, v_cache, tables, slots = _paged_cache(model, sequences, device)
    trees = [_random_tree(nodes) for _ in range(sequences)]
    tree_mask = torch.cat(trees).to(device)
    window = _window(slots).repeat_interleave(nodes, 0)
    valid = torch.zeros(window.shape, dtype=torch.bool, device=device)
    valid[:, :prefix] = True
    valid[:, prefix:model.context] = tree_mask
    context_lens = (prefix + tree_mask.sum(dim=1)).to(torch.int32)
    q = random(sequences * nodes, model.heads, model.head_dim, device=device)
    return KernelCall((q, k_cache, v_cache, tables.repeat_interleave(nodes, 0), context_lens, tree_mask, window,
                       valid), {"scale": model.head_dim**-0.5})


def _tree_reference(q, k_cache, v_cache, block_tables, context_lens, tree_mask, window, valid, scale):
    return decode_attention(q, k_cache, v_cache, window, valid, scale)


def _tree_kernel(q, k_cache, v_cache, block_tables, context_lens, tree_mask, window, valid, scale, pdl=False):
    from kilotok.kernels.triton import ops

    return ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, tree_mask, scale, 0, pdl)


def _prefill_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    """One sequence's last `tokens` tokens arriving at once (a chunk of a long prompt), its keys cached."""
    k_cache, v_cache, tables, slots = _paged_cache(model, 1, device)
    context_lens = torch.tensor([model.context], dtype=torch.int32, device=device)
    query_start_loc = torch.tensor([0, tokens], dtype=torch.int32, device=device)
    q = random(tokens, model.heads, model.head_dim, device=device)
    return KernelCall((q, k_cache, v_cache, tables, context_lens, query_start_loc, slots[0]),
                      {"scale": model.head_dim**-0.5, "chunk": model.attention_chunk})


def _visible_keys(context: int, tokens: int, chunk: int, device: torch.device | None = None) -> torch.Tensor:
    """[tokens, context] bool: the last `tokens` positions each see the keys up to their own, from their
    chunk's start on."""
    keys = torch.arange(context, device=device)
    queries = keys[context - tokens:, None]
    visible = keys[None, :] <= queries
    if chunk:
        visible &= keys[None, :] >= queries // chunk * chunk
    return visible


def _prefill_reference(q, k_cache, v_cache, block_tables, context_lens, query_start_loc, slots, scale, chunk):
    keys = k_cache.flatten(0, 1)[slots].transpose(0, 1)
    values = v_cache.flatten(0, 1)[slots].transpose(0, 1)
    visible = _visible_keys(slots.shape[0], q.shape[0], chunk, q.device)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=visible, scale=scale,
                                         enable_gqa=True)
    return out.transpose(0, 1)


def _prefill_kernel(q, k_cache, v_cache, block_tables, context_lens, query_start_loc, slots, scale, chunk,
                    pdl=False):
    from kilotok.kernels.triton import ops

    return ops.paged_prefill_attention(q, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale,
                                       chunk, pdl)


def _attention_bytes(model: ModelShape, rows: int, sequences: int, keys: int, dtype: torch.dtype) -> int:
    """q read and the output written per row; each sequence's `keys` keys and values, its block table and
    length read once."""
    element = element_size(dtype)
    queries = 2 * rows * model.heads * model.head_dim * element
    key_bytes = 2 * sequences * keys * model.kv_heads * model.head_dim * element
    return queries + key_bytes + sequences * (math.ceil(model.context / BLOCK_SIZE) + 1) * 4


def _scores_flops(model: ModelShape, key_query_pairs: int) -> int:
    """q.k and p.v: a multiply-add per head dimension each, per query head and visible key."""
    return 4 * key_query_pairs * model.heads * model.head_dim


def _decode_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    keys = model.context - _chunk_start(model.context - 1, model.attention_chunk)
    return Workload(_attention_bytes(model, tokens, tokens, keys, dtype), _scores_flops(model, tokens * keys))


def _tree_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    """The rows of one tree share their sequence's keys: counted once. Operations count the prefix (each
    row's few tree keys add under 0.2% at these contexts)."""
    sequences, nodes = tree_rows(tokens)
    rows = sequences * nodes
    bytes_ = _attention_bytes(model, rows, sequences, model.context, dtype) + 2 * rows * nodes * 4  # mask and positions
    return Workload(bytes_, _scores_flops(model, rows * (model.context - nodes)))


def _prefill_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    chunk = model.attention_chunk
    first = model.context - tokens
    pairs = sum(p + 1 - _chunk_start(p, chunk) for p in range(first, model.context))
    keys = model.context - _chunk_start(first, chunk)
    return Workload(_attention_bytes(model, tokens, 1, keys, dtype), _scores_flops(model, pairs))


def _chunk_start(position: int, chunk: int) -> int:
    return position // chunk * chunk if chunk else 0


ENTRIES = (
    BenchKernel("decode_attention", _decode_inputs, _decode_reference, _decode_kernel, _decode_workload,
                tolerance=2e-2, pdl=True),
    BenchKernel("tree_attention", _tree_inputs, _tree_reference, _tree_kernel, _tree_workload, tolerance=2e-2,
                pdl=True),
    BenchKernel("prefill_attention", _prefill_inputs, _prefill_reference, _prefill_kernel, _prefill_workload,
                tolerance=2e-2, pdl=True),
)
