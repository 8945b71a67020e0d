"""The GPU mode of `kilotok bench kernels`, on what the CPU can check: the bytes and operations each kernel
is credited with, every registry entry's inputs against its reference, one kernel through the whole case
(check, rotated inputs, timing) under Triton's interpreter, the report, and the clear refusal without CUDA."""

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
    MODELS,
    SMOLLM2_135M,
    BenchKernel,
    KernelCall,
)
from kilotok.bench.kernels import resolve_mode
from kilotok.bench.kernels_gpu import Ceilings, GpuBenchSettings, bench_case, report
from kilotok.errors import InvalidRequestError

BF16 = 2


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
])
def test_bytes_each_kernel_must_move(name, model, tokens, expected_bytes):
    assert _entry(name).workload(model, tokens, torch.bfloat16).bytes == expected_bytes


def test_l2_norm_adds_operations_not_bytes():
    rope = _entry("rope")
    plain = dataclasses.replace(MAVERICK_MOE_LAYER, qk_l2_norm=False)
    with_norm, without = (rope.workload(m, 8, torch.bfloat16) for m in (MAVERICK_MOE_LAYER, plain))
    assert with_norm.bytes == without.bytes and with_norm.flops > without.flops


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_every_entry_draws_inputs_its_reference_takes(entry, model):
    call = entry.inputs(model, 3, torch.device("cpu"))
    outputs = entry.reference(*call.args, **call.options)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert all(out.shape[0] == 3 and torch.isfinite(out.float()).all() for out in outputs)
    assert all(arg.float().abs().sum() > 0 for arg in call.args)


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
