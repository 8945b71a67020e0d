"""The fused MoE kernel under the interpreter against the PyTorch reference (kernels/moe.py), on random small
layers: float and FP8 experts, top-1 and top-2, the gate weight on the input (Llama 4) or on the output."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.moe import moe_experts
from kilotok.quant.fp8 import quantize_fp8

fused = pytest.importorskip("kilotok.kernels.triton.fused_moe")

CONFIGS = [  # experts, hidden, ffn, top_k, gate_on_input
    (4, 64, 48, 1, True),
    (8, 96, 40, 2, False),
    (6, 80, 72, 2, True),
]


def layer(experts: int, hidden: int, ffn: int, top_k: int, tokens: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=generator)
    gate_up = torch.randn(experts, 2 * ffn, hidden, generator=generator) / hidden**0.5
    down = torch.randn(experts, hidden, ffn, generator=generator) / ffn**0.5
    logits = torch.randn(tokens, experts, generator=generator)
    weights, ids = logits.softmax(-1).topk(top_k, dim=-1)
    return x, weights, ids, gate_up, down


def close(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    """Within rtol of the output's scale (per token), the error a reordered sum may make."""
    scale = expected.float().abs().amax(dim=-1, keepdim=True) + 1e-6
    return bool(((got.float() - expected.float()).abs() <= rtol * scale).all())


@pytest.mark.parametrize("tokens", [1, 5, 17])
@pytest.mark.parametrize("config", CONFIGS, ids=["E4-top1-in", "E8-top2-out", "E6-top2-in"])
def test_float_experts_match_the_reference(config, tokens):
    experts, hidden, ffn, top_k, gate_on_input = config
    x, weights, ids, gate_up, down = layer(experts, hidden, ffn, top_k, tokens, seed=tokens * experts)
    got = moe_experts(x, weights, ids, gate_up, down, gate_on_input, KernelBackend.TRITON)
    expected = moe_experts(x, weights, ids, gate_up, down, gate_on_input, KernelBackend.TORCH)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert close(got, expected, 1e-5)


@pytest.mark.parametrize("tokens", [1, 17])
@pytest.mark.parametrize("config", CONFIGS[:2], ids=["top1-in", "top2-out"])
def test_fp8_experts_match_the_reference(config, tokens):
    experts, hidden, ffn, top_k, gate_on_input = config
    x, weights, ids, gate_up, down = layer(experts, hidden, ffn, top_k, tokens, seed=tokens + 100)
    gate_up8, down8 = quantize_fp8(gate_up, "block", (32, 32)), quantize_fp8(down, "channel")
    got = moe_experts(x, weights, ids, gate_up8, down8, gate_on_input, KernelBackend.TRITON)
    expected = moe_experts(x, weights, ids, gate_up8, down8, gate_on_input, KernelBackend.TORCH)
    # Both quantize the same activations; with the weight on the input the reference quantizes weight * x,
    # whose codes may differ from x's by a rounding, one E4M3 step of one element.
    assert close(got, expected, 1e-5 if not gate_on_input else 2e-2)


def test_bf16_experts_match_the_reference():
    x, weights, ids, gate_up, down = layer(8, 96, 40, 2, 5, seed=3)
    gate_up, down, x = gate_up.bfloat16(), down.bfloat16(), x.bfloat16()
    got = moe_experts(x, weights.bfloat16(), ids, gate_up, down, False, KernelBackend.TRITON)
    expected = moe_experts(x, weights.bfloat16(), ids, gate_up, down, False, KernelBackend.TORCH)
    assert got.dtype == torch.bfloat16
    # The reference rounds to bf16 after each product and after silu(gate) * up; the kernel after the SwiGLU.
    assert close(got, expected, 2**-5)


def test_align_lays_out_each_pair_once_in_its_experts_blocks():
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [3, 2], [1, 0]])
    sorted_pairs, block_experts = fused.align_by_expert(ids, num_experts=5, block_m=4)
    num_pairs = ids.numel()
    real = sorted_pairs[sorted_pairs < num_pairs]
    assert sorted(real.tolist()) == list(range(num_pairs))
    blocks = sorted_pairs.view(-1, 4)
    for block, expert in zip(blocks, block_experts.tolist(), strict=True):
        pairs = block[block < num_pairs]
        if expert < 0:
            assert pairs.numel() == 0
        else:
            assert (ids.flatten()[pairs] == expert).all()
    assert block_experts.tolist()[:4] == [0, 1, 2, 3] and set(block_experts.tolist()[4:]) == {-1}
