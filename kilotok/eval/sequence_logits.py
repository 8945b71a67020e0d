"""Logits at every position of one token sequence, through kilotok's own model forward.

The engine only needs the last position's logits; perplexity needs all of them. This runs a single
prefill over a private paged KV cache sized for the longest window (the engine's cache is not touched:
the model gets its own cache tensors here, so build a separate model for this).
"""

from __future__ import annotations

import torch

from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.models.llama import LlamaForCausalLM

BLOCK_SIZE = 16


class SequenceLogits:
    def __init__(self, model: LlamaForCausalLM, max_len: int) -> None:
        self.model = model
        self.max_len = max_len
        self.device = next(model.parameters()).device
        num_blocks = -(-max_len // BLOCK_SIZE)
        config = model.config
        shape = (num_blocks, BLOCK_SIZE, config.num_kv_heads, config.head_dim)
        for layer in model.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=model.activation_dtype, device=self.device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=model.activation_dtype, device=self.device)

    @torch.inference_mode()
    def __call__(self, token_ids: list[int]) -> torch.Tensor:
        """[len(token_ids), vocab] float32: row p is the model's prediction for token p + 1."""
        length = len(token_ids)
        if not 1 <= length <= self.max_len:
            raise ValueError(f"sequence of {length} tokens; this scorer holds 1 to {self.max_len}")
        num_blocks = -(-length // BLOCK_SIZE)
        # One sequence laid out in blocks 0, 1, 2, ... in order, so slot p is simply p.
        meta = AttentionMetadata(
            slot_mapping=torch.arange(length, dtype=torch.int64, device=self.device),
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=self.device)[None],
            context_lens=torch.tensor([length], dtype=torch.int32, device=self.device),
            query_start_loc=torch.tensor([0, length], dtype=torch.int32, device=self.device),
        )
        input_ids = torch.tensor(token_ids, dtype=torch.int64, device=self.device)
        positions = torch.arange(length, dtype=torch.int64, device=self.device)
        hidden, _ = self.model(input_ids, positions, meta)
        return self.model.compute_logits(hidden)
