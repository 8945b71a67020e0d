"""The grouped expert layer against transformers' own MoE blocks (Llama 4, Mixtral, Qwen3-MoE), with the
weights copied across, at batch sizes where some experts get no tokens and where all get many."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kilotok.kernels.fp8_gemm import quantize_activations
from kilotok.kernels.moe import grouped_expert_mlp, sort_by_expert
from kilotok.layers.linear import DenseLinear
from kilotok.layers.moe import SparseMoe, route
from kilotok.models.causal_lm import MLP
from kilotok.quant.fp8 import quantize_fp8

transformers = pytest.importorskip("transformers")
from transformers.models.llama4.modeling_llama4 import Llama4TextMoe  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: E402

HIDDEN, FFN, EXPERTS = 32, 24, 6


def randomised(block):
    torch.manual_seed(0)
    with torch.no_grad():
        for param in block.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    return block.eval()


def ours_from_llama4(block: Llama4TextMoe) -> SparseMoe:
    shared = block.shared_expert
    shared_mlp = MLP(
        DenseLinear(torch.cat([shared.gate_proj.weight, shared.up_proj.weight]), None, torch.float32),
        DenseLinear(shared.down_proj.weight, None, torch.float32),
    )
    experts = block.experts
    return SparseMoe(DenseLinear(block.router.weight, None, torch.float32),
                     experts.gate_up_proj.detach().transpose(1, 2), experts.down_proj.detach().transpose(1, 2),
                     block.top_k, "sigmoid", renormalize=False, gate_on_input=True, shared_expert=shared_mlp)


def ours_from_softmax_block(block, renormalize: bool) -> SparseMoe:
    return SparseMoe(DenseLinear(block.gate.weight, None, torch.float32), block.experts.gate_up_proj.detach(),
                     block.experts.down_proj.detach(), block.gate.top_k, "softmax", renormalize, gate_on_input=False)


def blocks():
    common = dict(hidden_size=HIDDEN, intermediate_size=FFN, num_local_experts=EXPERTS)
    llama4 = randomised(Llama4TextMoe(transformers.Llama4TextConfig(num_experts_per_tok=2, **common)))
    mixtral = randomised(MixtralSparseMoeBlock(transformers.MixtralConfig(num_experts_per_tok=2, **common)))
    qwen = {
        norm: randomised(Qwen3MoeSparseMoeBlock(transformers.Qwen3MoeConfig(
            hidden_size=HIDDEN, moe_intermediate_size=FFN, num_experts=EXPERTS, num_experts_per_tok=3,
            norm_topk_prob=norm)))
        for norm in (True, False)
    }
    return {
        "llama4": (lambda x: llama4(x)[0], ours_from_llama4(llama4)),
        "mixtral": (lambda x: mixtral(x[None])[0], ours_from_softmax_block(mixtral, True)),
        "qwen3-renormalised": (lambda x: qwen[True](x[None])[0], ours_from_softmax_block(qwen[True], True)),
        "qwen3-raw": (lambda x: qwen[False](x[None])[0], ours_from_softmax_block(qwen[False], False)),
    }


@pytest.mark.parametrize("tokens", [1, 8, 64])
@torch.inference_mode()
def test_sparse_moe_matches_transformers_blocks(tokens):
    x = torch.randn(tokens, HIDDEN, generator=torch.Generator().manual_seed(tokens))
    for name, (reference, ours) in blocks().items():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5, msg=name)


def test_route_follows_the_definitions():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [3.0, 1.0, -2.0, 1.5]])
    weights, experts = route(logits, 2, "softmax", renormalize=False)
    probs = logits.softmax(-1)
    assert experts.tolist() == [[2, 0], [0, 3]]
    torch.testing.assert_close(weights, probs.gather(1, experts))
    weights, _ = route(logits, 2, "softmax", renormalize=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    weights, experts = route(logits, 1, "sigmoid", renormalize=False)
    assert experts.tolist() == [[2], [0]]
    torch.testing.assert_close(weights, torch.sigmoid(torch.tensor([[2.0], [3.0]])))


def test_grouped_experts_run_each_group_through_its_own_expert():
    generator = torch.Generator().manual_seed(0)
    gate_up = torch.randn(4, 2 * FFN, HIDDEN, generator=generator)
    down = torch.randn(4, HIDDEN, FFN, generator=generator)
    experts = torch.tensor([[3, 0], [3, 1], [0, 3]])  # expert 2 gets nothing
    order, sizes = sort_by_expert(experts, 4)
    assert sizes.tolist() == [2, 1, 0, 3]
    assert experts.flatten()[order].tolist() == [0, 0, 1, 3, 3, 3]
    rows = torch.randn(6, HIDDEN, generator=generator)
    got = grouped_expert_mlp(rows, sizes, gate_up, down)
    for row, expert in enumerate([0, 0, 1, 3, 3, 3]):
        gate, up = (gate_up[expert] @ rows[row]).chunk(2)
        torch.testing.assert_close(got[row], down[expert] @ (F.silu(gate) * up), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["channel", "block"])
@pytest.mark.parametrize("gate_on_input", [False, True])
@torch.inference_mode()
def test_fp8_experts_match_the_dequantized_product(scheme, gate_on_input):
    generator = torch.Generator().manual_seed(4)
    gate_up = torch.randn(EXPERTS, 2 * FFN, HIDDEN, generator=generator) * 0.3
    down = torch.randn(EXPERTS, HIDDEN, FFN, generator=generator) * 0.3
    router = DenseLinear(torch.randn(EXPERTS, HIDDEN, generator=generator), None, torch.float32)
    gate_up8, down8 = quantize_fp8(gate_up, scheme, (16, 16)), quantize_fp8(down, scheme, (16, 16))
    layer = SparseMoe(router, gate_up8, down8, 2, "softmax", True, gate_on_input)
    x = torch.randn(9, HIDDEN, generator=generator)
    group = 16 if scheme == "block" else None

    def rounded(rows: torch.Tensor) -> torch.Tensor:
        codes, scales = quantize_activations(rows, group or rows.shape[-1])
        return codes.double() * scales.double().repeat_interleave(group or rows.shape[-1], -1)[:, : rows.shape[-1]]

    weights, experts = route(router(x), 2, "softmax", True)
    expected = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for weight, e in zip(weights[t].tolist(), experts[t].tolist(), strict=True):
            row = x[t:t + 1] * weight if gate_on_input else x[t:t + 1]
            gate, up = (rounded(row) @ gate_up8.expert(e).dequantize().double().T).chunk(2, dim=-1)
            inner = (F.silu(gate) * up).float()
            out = rounded(inner) @ down8.expert(e).dequantize().double().T
            expected[t] += out[0] * (1.0 if gate_on_input else weight)
    got = layer(x)
    assert layer.gate_up.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
