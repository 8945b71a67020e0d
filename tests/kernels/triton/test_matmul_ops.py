"""The FP8 GEMM and fused MoE kernels as torch ops: their fake implementations agree with the kernels on shape
and dtype (torch.library.opcheck, under the interpreter), and a compiled function keeps each call as one op
of the graph, with the kernel's result."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.fp8_gemm import fp8_gemm
from kilotok.kernels.moe import moe_experts
from kilotok.quant.fp8 import quantize_fp8

ops = pytest.importorskip("kilotok.kernels.triton.matmul_ops")

TRITON = KernelBackend.TRITON


def _fp8_operands(seed: int):
    generator = torch.Generator().manual_seed(seed)
    weight = quantize_fp8(torch.randn(72, 160, generator=generator), "block", (32, 64))
    return torch.randn(5, 160, generator=generator).bfloat16(), weight


def _moe_operands(seed: int, fp8: bool):
    generator = torch.Generator().manual_seed(seed)
    experts, hidden, ffn, tokens = 4, 96, 40, 3
    x = torch.randn(tokens, hidden, generator=generator)
    gate_up = torch.randn(experts, 2 * ffn, hidden, generator=generator) / hidden**0.5
    down = torch.randn(experts, hidden, ffn, generator=generator) / ffn**0.5
    weights, ids = torch.randn(tokens, experts, generator=generator).softmax(-1).topk(2, dim=-1)
    if fp8:
        gate_up, down = quantize_fp8(gate_up, "channel"), quantize_fp8(down, "block", (32, 32))
    return x, weights, ids, gate_up, down


# opcheck's schema test compares inputs before and after with ops that CPU torch lacks for float8 tensors, so
# FP8 operands get the fake-tensor test alone.
FAKE_ONLY = ("test_faketensor",)
SCHEMA_AND_FAKE = ("test_schema", "test_faketensor")


def _op_args(weight):
    if isinstance(weight, torch.Tensor):
        return weight, None, [1, 1]
    return weight.data, weight.scale, list(weight.block)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fp8_gemm_op_passes_opcheck(out_dtype):
    x, weight = _fp8_operands(1)
    torch.library.opcheck(ops.fp8_gemm, (x, weight.data, weight.scale, list(weight.block), None, out_dtype, True),
                          test_utils=FAKE_ONLY)


@pytest.mark.parametrize("fp8", [False, True], ids=["float", "fp8"])
def test_fused_moe_op_passes_opcheck(fp8):
    x, weights, ids, gate_up, down = _moe_operands(2, fp8)
    torch.library.opcheck(ops.fused_moe, (x, weights, ids, *_op_args(gate_up), *_op_args(down), False, True),
                          test_utils=FAKE_ONLY if fp8 else SCHEMA_AND_FAKE)


def _one_op_graph_backend(graphs: list):
    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    return backend


def test_a_compiled_step_keeps_each_kernel_as_one_op():
    x8, weight = _fp8_operands(3)
    x, weights, ids, gate_up, down = _moe_operands(4, fp8=True)

    def step(x8, x, weights, ids):
        projected = fp8_gemm(x8, weight.data, weight.scale, weight.block, backend=TRITON, pdl=True)
        return projected, moe_experts(x, weights, ids, gate_up, down, True, backend=TRITON, pdl=True)

    graphs = []
    compiled = torch.compile(step, backend=_one_op_graph_backend(graphs), fullgraph=True)
    got = compiled(x8, x, weights, ids)
    expected = step(x8, x, weights, ids)
    assert len(graphs) == 1
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.kilotok.triton_fp8_gemm.default) == 1
    assert targets.count(torch.ops.kilotok.triton_fused_moe.default) == 1
    assert got[0].shape == (5, 72) and got[0].dtype == torch.bfloat16 and got[1].shape == x.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_aot_graph_traces_the_ops_through_their_fake_implementations():
    x, weights, ids, gate_up, down = _moe_operands(5, fp8=False)
    compiled = torch.compile(lambda x: moe_experts(x, weights, ids, gate_up, down, False, backend=TRITON) * 2,
                             backend="aot_eager", fullgraph=True)
    expected = moe_experts(x, weights, ids, gate_up, down, False, backend=KernelBackend.TORCH) * 2
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
