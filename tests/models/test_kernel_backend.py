"""Whole models on the Triton backend (its kernels run on CPU tensors through Triton's interpreter) against
the same checkpoint on the torch backend: Llama (RoPE on halves, Llama 3 scaling) and Llama 4 (RoPE on
adjacent pairs with the QK L2 norm fused, NoPE layers, experts with a shared expert's SwiGLU). tests/conftest.py
has chosen the interpreter."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels.backend import KernelBackend
from kilotok.loader.checkpoint import Checkpoint
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from tests.models.moe_reference import save_folder
from tests.models.paged_forward import attach_cache, paged_step

pytest.importorskip("triton")
transformers = pytest.importorskip("transformers")

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
TABLES = [[7, 3, 20, 9, 30], [1, 40, 2, 15]]


def _logits_by_backend(load) -> dict[KernelBackend, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 96, (n,), generator=generator).tolist() for n in (17, 3)]
    logits = {}
    for backend in KernelBackend:
        model = build_model(load(), "fp32", progress=False, backend=backend)
        attach_cache(model, num_blocks=64)
        logits[backend] = paged_step(model, prompts, [0, 0], TABLES)
    return logits


def _assert_backends_agree(load) -> None:
    logits = _logits_by_backend(load)
    for torch_rows, triton_rows in zip(logits[KernelBackend.TORCH], logits[KernelBackend.TRITON], strict=True):
        torch.testing.assert_close(triton_rows, torch_rows, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_llama_on_the_triton_backend_matches_torch():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=72, intermediate_size=100, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                                      rms_norm_eps=1e-5, rope_scaling=LLAMA3_ROPE, initializer_range=0.2)
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    weights = {name: t.clone() for name, t in reference.state_dict().items()}
    _assert_backends_agree(lambda: Checkpoint(config.to_dict(), weights, tokenizer=None, path=None, name="random"))


@torch.inference_mode()
def test_llama4_on_the_triton_backend_matches_torch(tmp_path):
    from tests.models.test_llama4 import random_llama4

    folder = save_folder(random_llama4(seed=1, num_hidden_layers=4), tmp_path)
    _assert_backends_agree(lambda: load_checkpoint(str(folder), progress=False))
