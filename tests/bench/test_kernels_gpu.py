"""The GPU mode of `kilotok bench kernels`, on what the CPU can check: the bytes and operations each kernel
is credited with, every registry entry through a whole case (check, rotated inputs, timing) under Triton's
interpreter at tiny shapes, each reference traced as one graph, the goal cases first, the report, and the
clear refusal without CUDA."""

from __future__ import annotations

import dataclasses
import functools
import time

import pytest
import torch

from kilotok.bench.kernel_registry import (
    KERNELS,
    LLAMA31_8B,
    MAVERICK_MOE_LAYER,
    MIXTRAL_MOE_LAYER,
    SMOLLM2_135M,
    BenchKernel,
    KernelCall,
    ModelShape,
)
from kilotok.bench.kernel_registry.moe import gathered_moe
from kilotok.bench.kernels import resolve_mode
from kilotok.bench.kernels_gpu import Ceilings, GpuBenchSettings, bench_case, ordered_cases, report
from kilotok.errors import InvalidRequestError
from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.moe import moe_experts
from kilotok.quant.fp8 import quantize_fp8

BF16 = 2
CPU = torch.device("cpu")
# Tiny layers with sizes that are multiples of no tile: a dense model, Llama 4's MoE layer (top-1, shared
# expert, gate weight on the input, chunked-local attention with chunks shorter than the context, QK L2 norm)
# and a Mixtral-like top-2 layer.
TINY_DENSE = ModelShape("tiny-dense", hidden=160, heads=6, kv_heads=2, head_dim=40, intermediate=72, vocab=300,
                        context=70)
TINY_MAVERICK = dataclasses.replace(
    MAVERICK_MOE_LAYER, name="tiny-maverick", hidden=160, heads=4, kv_heads=2, head_dim=32, intermediate=96,
    vocab=300, context=45, attention_chunk=16, experts=5, expert_intermediate=48)
TINY_MIXTRAL = dataclasses.replace(MIXTRAL_MOE_LAYER, name="tiny-mixtral", hidden=96, heads=4, kv_heads=4,
                                   head_dim=24, intermediate=40, vocab=200, context=33, experts=4,
                                   expert_intermediate=40)
TINY_MODELS = (TINY_DENSE, TINY_MAVERICK, TINY_MIXTRAL)


def _entry(name: str) -> BenchKernel:
    return next(entry for entry in KERNELS if entry.name == name)


@pytest.mark.parametrize(("name", "model", "tokens", "expected_bytes"), [
    # x read and the normed row written, the fp32 weight read once.
    ("rms_norm", SMOLLM2_135M, 1, 2 * 576 * BF16 + 576 * 4),
    # x and the residual read, the normed row and the new residual written.
    ("add_rms_norm", LLAMA31_8B, 8, 4 * 8 * 4096 * BF16 + 4096 * 4),
    # gate and up read, their product written, at the expert's width on the MoE layer.
    ("swiglu", MAVERICK_MOE_LAYER, 64, 3 * 64 * 8192 * BF16),
    ("swiglu", LLAMA31_8B, 1, 3 * 14336 * BF16),
    # q and k read and written in place, a cos and a sin row (fp32) and the position (int64) per token.
    ("rope", LLAMA31_8B, 1, 2 * (32 + 8) * 128 * BF16 + 2 * 64 * 4 + 8),
    # Llama 4's QK L2 norm alone: every q and k head read and written.
    ("qk_l2_norm", MAVERICK_MOE_LAYER, 8, 2 * 8 * (40 + 8) * 128 * BF16),
    # One sequence of 4096 keys: its keys and values once, q and the output, its 256-block table and length.
    ("decode_attention", LLAMA31_8B, 1, 2 * 4096 * 8 * 128 * BF16 + 2 * 32 * 128 * BF16 + (256 + 1) * 4),
    # 8 rows of one tree share one sequence's keys; each row reads its mask and positions over the 8 nodes.
    ("tree_attention", LLAMA31_8B, 8,
     2 * 4096 * 8 * 128 * BF16 + 8 * 2 * 32 * 128 * BF16 + (256 + 1) * 4 + 2 * 8 * 8 * 4),
    # x read and y written in bf16, the 28672 x 4096 weight in one byte per value and one fp32 scale per row.
    ("fp8_gemm_channel", LLAMA31_8B, 1, (4096 + 28672) * BF16 + 28672 * 4096 + 28672 * 4),
    ("fp8_gemm_block", LLAMA31_8B, 1, (4096 + 28672) * BF16 + 28672 * 4096 + 224 * 32 * 4),
    ("bf16_gemm", LLAMA31_8B, 1, (4096 + 28672) * BF16 + 28672 * 4096 * BF16),
    # One routed expert and the shared one (gate/up and down: 3 x 8192 x 5120 each), x and the output,
    # the two pairs' ids (int64) and weights.
    ("fused_moe_bf16", MAVERICK_MOE_LAYER, 1, 2 * 3 * 8192 * 5120 * BF16 + 2 * 5120 * BF16 + 2 * (8 + BF16)),
    ("fused_moe_fp8", MAVERICK_MOE_LAYER, 1,
     2 * (3 * 8192 * 5120 + (2 * 8192 + 5120) * 4) + 2 * 5120 * BF16 + 2 * (8 + BF16)),
    # 8 tokens x top-2 reach all 8 Mixtral experts: each read once.
    ("fused_moe_bf16", MIXTRAL_MOE_LAYER, 8, 8 * 3 * 14336 * 4096 * BF16 + 2 * 8 * 4096 * BF16 + 16 * (8 + BF16)),
    ("greedy_argmax", LLAMA31_8B, 1, 128256 * 4 + 8),
])
def test_bytes_each_kernel_must_move(name, model, tokens, expected_bytes):
    assert _entry(name).workload(model, tokens, torch.bfloat16).bytes == expected_bytes


def test_l2_norm_adds_operations_not_bytes():
    rope = _entry("rope")
    plain = dataclasses.replace(MAVERICK_MOE_LAYER, qk_l2_norm=False)
    with_norm, without = (rope.workload(m, 8, torch.bfloat16) for m in (MAVERICK_MOE_LAYER, plain))
    assert with_norm.bytes == without.bytes and with_norm.flops > without.flops


def test_fp8_gemm_is_credited_about_half_the_bf16_bytes_at_batch_1():
    fp8, bf16 = (_entry(name).workload(LLAMA31_8B, 1, torch.bfloat16) for name in ("fp8_gemm_tensor", "bf16_gemm"))
    assert fp8.flops == bf16.flops == 2 * 28672 * 4096
    assert 0.5 < fp8.bytes / bf16.bytes < 0.51


def test_moe_entries_have_no_case_on_dense_models():
    for name in ("fused_moe_bf16", "fused_moe_fp8", "qk_l2_norm"):
        assert _entry(name).inputs(TINY_DENSE, 2, CPU) is None


def test_moe_routing_reaches_as_many_distinct_experts_as_the_workload_counts():
    call = _entry("fused_moe_bf16").inputs(TINY_MAVERICK, 4, CPU)
    x, weights, experts = call.args
    routed, shared = experts[:, 0], experts[:, 1]
    assert routed.unique().numel() == 4 and (shared == TINY_MAVERICK.experts).all()
    assert (weights[:, 1] == 1).all() and call.options["gate_on_input"]
    call = _entry("fused_moe_bf16").inputs(TINY_MIXTRAL, 3, CPU)
    experts = call.args[2]
    assert experts.unique().numel() == 4 and all(len(set(row.tolist())) == 2 for row in experts)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("model", [TINY_MAVERICK, TINY_MIXTRAL], ids=lambda m: m.name)
def test_the_gathered_moe_reference_computes_the_engines_reference(model, fp8):
    entry = _entry("fused_moe_fp8" if fp8 else "fused_moe_bf16")
    call = entry.inputs(model, 5, CPU)
    x, weights, experts = (arg.float() if arg.is_floating_point() else arg for arg in call.args)
    gate_up, down = (w.float() for w in _entry("fused_moe_bf16").shared(model, CPU))
    if fp8:
        gate_up, down = quantize_fp8(gate_up, "channel"), quantize_fp8(down, "channel")
    got = gathered_moe(x, weights, experts, gate_up, down, **call.options)
    expected = moe_experts(x, weights, experts, gate_up, down, **call.options, backend=KernelBackend.TORCH)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_sampling_inputs_make_both_cut_offs_matter():
    """Else the check could not see a kernel that ignores one."""
    entry = _entry("sample_top_k_top_p")
    torch.manual_seed(5)
    call = entry.inputs(TINY_DENSE, 16, CPU)
    drawn = entry.reference(*call.args, **call.options)
    for cut_off in ("use_top_k", "use_top_p"):
        assert not torch.equal(entry.reference(*call.args, **{**call.options, cut_off: False}), drawn)


def test_goal_cases_come_first_in_a_run():
    entries = [_entry(name) for name in ("rms_norm", "fused_moe_bf16", "fused_moe_fp8")]
    cases = ordered_cases(entries, [SMOLLM2_135M, MAVERICK_MOE_LAYER, LLAMA31_8B], (1, 8, 64))
    first = [(entry.name, model.name, tokens) for entry, model, tokens in cases[:7]]
    assert first == [(name, "llama-3.1-8b", 1) for name in ("rms_norm", "fused_moe_bf16", "fused_moe_fp8")] + [
        ("fused_moe_bf16", "llama4-maverick-moe", 1), ("fused_moe_fp8", "llama4-maverick-moe", 1),
        ("fused_moe_bf16", "llama4-maverick-moe", 8), ("fused_moe_fp8", "llama4-maverick-moe", 8)]
    assert cases[7][1] is SMOLLM2_135M and len(cases) == 27


def _wall_clock_ms(fn, calls: list[KernelCall], replays: int) -> float:
    start = time.perf_counter()
    for call in calls:
        fn(*call.args, **call.options)
    return (time.perf_counter() - start) * 1e3 / len(calls)


def test_one_kernel_through_a_whole_case_under_the_interpreter():
    pytest.importorskip("triton")
    entry = _entry("rms_norm")
    # Under the interpreter a PDL launch is a plain one: this checks that the keyword reaches the kernel.
    implementations = {"triton": entry.kernel, "triton+pdl": functools.partial(entry.kernel, pdl=True),
                       "torch": entry.reference}
    record = bench_case(entry, SMOLLM2_135M, 1, implementations,
                        Ceilings(copy_gbps=1000.0, matmul_tflops=100.0), torch.device("cpu"), l2_bytes=10_000,
                        replays=1, time_fn=_wall_clock_ms)
    assert record["passed"] and record["relative_error"] < 1e-2
    assert record["bytes"] == 2 * 576 * BF16 + 576 * 4
    assert record["input_sets"] == 5  # twice the (pretend) L2 over the bytes of one call
    assert record["floor_ms"] == pytest.approx(record["bytes"] / 1000.0 / 1e6)
    assert record["ms"].keys() == implementations.keys() and not record["failures"]
    assert record["gbps"]["triton"] == pytest.approx(record["bytes"] / record["ms"]["triton"] / 1e6)


@pytest.mark.parametrize("model", TINY_MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_every_entry_passes_its_check_at_tiny_shapes_under_the_interpreter(entry, model):
    pytest.importorskip("triton")
    implementations = {"triton": entry.kernel}
    if entry.pdl:
        implementations["triton+pdl"] = functools.partial(entry.kernel, pdl=True)
    torch.manual_seed(len(entry.name) + model.hidden)
    record = bench_case(entry, model, 3, implementations, Ceilings(copy_gbps=1000.0, matmul_tflops=100.0), CPU,
                        l2_bytes=1, replays=1, time_fn=_wall_clock_ms)
    if record is None:  # only where the model has no such layer
        assert entry.name in {"fused_moe_bf16", "fused_moe_fp8"} and not model.experts or (
            entry.name == "qk_l2_norm" and not model.qk_l2_norm)
        return
    assert record["passed"], record["relative_error"]
    assert not record["failures"] and record["ms"].keys() == implementations.keys()
    assert record["bytes"] > 0 and record["flops"] > 0


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_every_reference_traces_as_one_graph(entry):
    """What torch.compile is timed on must compile whole (no graph break, no host sync): traced here with
    the eager backend, which checks the graph without generating code."""
    for model in TINY_MODELS:
        call = entry.inputs(model, 2, CPU)
        if call is None:
            continue
        shared = entry.shared(model, CPU) if entry.shared else ()
        torch._dynamo.reset()
        compiled = torch.compile(entry.reference, backend="eager", fullgraph=True, dynamic=False)
        compiled(*call.args, *shared, **call.options)


def test_the_report_marks_failures_and_missing_figures():
    document = {"ceilings": {"copy_gbps": 4000.0, "matmul_tflops": 800.0}, "records": [
        {"kernel": "swiglu", "model": "llama-3.1-8b", "tokens": 8, "relative_error": 0.5, "passed": False,
         "ms": {"triton": 0.004, "torch": 0.008, "torch.compile": 0.006}, "gbps": {"triton": 2000.0},
         "tflops": {"triton": 0.1}},
        {"kernel": "rope", "model": "smollm2-135m", "tokens": 1, "relative_error": 1e-3, "passed": True,
         "ms": {"torch": 0.003}, "gbps": {}, "tflops": {}},
        {"kernel": "rms_norm", "model": "smollm2-135m", "tokens": 1, "error": "RuntimeError()"},
    ]}
    header, failed, no_triton, crashed = report(document)
    assert failed[3] == "5.0e-01 FAIL" and failed[4:8] == ("4.0", "-", "8.0", "6.0")
    assert failed[8:] == ("2000", "50%", "0.10", "1.50x")
    assert no_triton[4] == "-" and no_triton[8:] == ("-", "-", "-", "-")
    assert crashed[3] == "ERROR" and len(crashed) == len(header)


def test_gpu_mode_is_refused_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidRequestError, match="needs a CUDA device"):
        resolve_mode("gpu")
    assert resolve_mode("auto") == "cpu"


def test_unknown_kernels_and_models_are_refused():
    with pytest.raises(InvalidRequestError, match="unknown kernel flash"):
        GpuBenchSettings(kernels=("flash",))
    with pytest.raises(InvalidRequestError, match="unknown model"):
        GpuBenchSettings(models=("gpt-5",))
