"""Mixtral and Qwen3-MoE loaded from save_pretrained folders against transformers: softmax top-k routing
(renormalised or not), Qwen3's per-head q/k RMSNorm, dense layers among the MoE ones."""

from __future__ import annotations

import pytest
import torch

from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from tests.models.moe_reference import perturb, random_prompts, save_folder
from tests.models.paged_forward import attach_cache, decode_step, paged_step

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.05)
TABLES = [[7, 3, 20, 9, 30, 31], [1, 40, 2, 15, 43]]
ATOL = 1e-3

FAMILIES = {
    "mixtral": lambda: transformers.MixtralForCausalLM(
        transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **SMALL)),
    "qwen3-renormalised-with-dense-layer": lambda: transformers.Qwen3MoeForCausalLM(
        transformers.Qwen3MoeConfig(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=24,
                                    norm_topk_prob=True, mlp_only_layers=[1], **SMALL)),
    "qwen3-raw-sparse-step": lambda: transformers.Qwen3MoeForCausalLM(
        transformers.Qwen3MoeConfig(num_experts=6, num_experts_per_tok=3, moe_intermediate_size=24,
                                    norm_topk_prob=False, decoder_sparse_step=2, **SMALL)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.inference_mode()
def test_moe_family_matches_transformers(tmp_path, family):
    torch.manual_seed(0)
    # A sharper router keeps top-k choices far from ties, so they cannot flip on rounding.
    reference = perturb(FAMILIES[family](), 0, {"gate.weight": 5.0})
    model = build_model(load_checkpoint(str(save_folder(reference, tmp_path)), progress=False), "fp32",
                        progress=False)
    attach_cache(model, num_blocks=64)
    prompts = random_prompts((21, 13))
    ours = paged_step(model, prompts, [0, 0], TABLES)
    for prompt, got in zip(prompts, ours, strict=True):
        torch.testing.assert_close(got, reference(torch.tensor([prompt])).logits[0], atol=ATOL, rtol=0)
    for _ in range(2):
        for prompt, logits in zip(prompts, ours, strict=True):
            prompt.append(int(logits[-1].argmax()))
        ours = [row[None] for row in decode_step(model, prompts, TABLES)]
        for prompt, got in zip(prompts, ours, strict=True):
            expected = reference(torch.tensor([prompt])).logits[0, -1]
            torch.testing.assert_close(got[0], expected, atol=ATOL, rtol=0)
