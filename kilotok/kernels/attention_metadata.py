"""The per-step description of where each token's keys and values live in the paged KV cache.

The model runner builds one `AttentionMetadata` per forward and passes it down through the model, so
every attention layer of that step reads the same tensors. Only tensors live here (no Python ints
derived from them), so a compiled decode step keeps one static graph whatever the context lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor
    """[T] int64: flat cache slot (block * block_size + offset) each new token's K/V is written to."""
    block_tables: torch.Tensor
    """[B, max_blocks] int32: the KV blocks of each sequence, in order; unused entries are 0."""
    context_lens: torch.Tensor
    """[B] int32: tokens in the cache for each sequence after this step's tokens are written."""
    query_start_loc: torch.Tensor
    """[B + 1] int32: the new tokens of sequence b are rows query_start_loc[b]:query_start_loc[b+1]."""
    decode_rows: bool = False
    """Every row is one query over its own sequence (a decode step, or draft-tree verification): kernels
    that read the block table take their decode path, without a gathered key window."""
    kv_gather_index: torch.Tensor | None = None
    """[B, L] int64, decode steps only: the flat cache slots of each sequence's keys in order, padded to
    the longest sequence and to a multiple of KEY_WINDOW_ALIGN (the compiled step gets it as [B, chunks,
    VALUE_CHUNK]). With it, decode attention is plain tensor ops that torch.compile can fuse."""
    kv_valid: torch.Tensor | None = None
    """[B, L] bool: which entries of kv_gather_index are real keys rather than padding."""
    tree_mask: torch.Tensor | None = None
    """[R, W] bool, speculative verification only (for kernels that read the block table rather than the
    gathered window): which of the sequence's W draft-tree keys (the root, then the nodes, at cache
    positions prefix + j) row r sees; the prefix is context_lens[r] less the row's visible tree keys."""
