"""The GPU mode of `kilotok bench kernels`: every kernel of the registry (bench/kernel_registry/) checked
against its PyTorch reference and timed beside that reference in eager torch and under `torch.compile`, at
each model's shapes and token count, with the achieved GB/s and TFLOP/s next to the ceilings measured at the
start (a large device-to-device copy; a large bf16 matrix product).

"triton+pdl" launches the kernel with Programmatic Dependent Launch (Hopper and newer), so that in the graph
each call's prologue overlaps the previous call's tail.

Timing: each implementation runs over enough freshly drawn input sets to pass the L2 cache twice (at most
MAX_INPUT_SETS), captured as one CUDA graph so that launch gaps from Python do not count; a replay of the graph
is timed with CUDA events, and the figure is the median over replays divided by the calls in the graph.
Operands an entry shares between input sets (a MoE layer's experts) are drawn once per case.

Cases run model by model in the order asked, after the issue's goal cases (kernel_registry.GOAL_CASES), so
that a run stopped by its time budget has those first.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from kilotok.bench.kernel_registry import (
    DTYPE,
    KERNELS,
    MODELS,
    TOKENS,
    BenchKernel,
    KernelCall,
    ModelShape,
    goal_rank,
)
from kilotok.bench.report import log
from kilotok.errors import InvalidRequestError

MAX_INPUT_SETS = 2048
COPY_BYTES = 2**30
MATMUL_SIZE = 8192
DEFAULT_L2_BYTES = 64 * 2**20
IMPLEMENTATIONS = ("triton", "triton+pdl", "torch", "torch.compile")


@dataclass(frozen=True)
class GpuBenchSettings:
    kernels: tuple[str, ...] = tuple(entry.name for entry in KERNELS)
    models: tuple[str, ...] = tuple(model.name for model in MODELS)
    tokens: tuple[int, ...] = TOKENS
    replays: int = 20
    compile: bool = True

    def __post_init__(self) -> None:
        for what, asked, known in (("kernel", self.kernels, [k.name for k in KERNELS]),
                                   ("model", self.models, [m.name for m in MODELS])):
            unknown = sorted(set(asked) - set(known))
            if unknown:
                raise InvalidRequestError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
        if not self.tokens or min(self.tokens) < 1 or self.replays < 1:
            raise InvalidRequestError("--tokens must be positive token counts and --replays at least 1")


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float
    """Device-to-device copy, bytes read plus bytes written."""
    matmul_tflops: float
    """bf16 matrix product of random square matrices."""


def _event_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `fn` on the device, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _copy_gbps(device: torch.device, repeats: int) -> float:
    source = torch.randn(COPY_BYTES // 4, device=device)
    target = torch.empty_like(source)
    return 2 * COPY_BYTES / _event_ms(lambda: target.copy_(source), repeats) / 1e6


def _matmul_tflops(device: torch.device, repeats: int) -> float:
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * MATMUL_SIZE**3 / _event_ms(lambda: a @ b, repeats) / 1e9


def measure_ceilings(device: torch.device, repeats: int = 10) -> Ceilings:
    return Ceilings(copy_gbps=_copy_gbps(device, repeats), matmul_tflops=_matmul_tflops(device, repeats))


def _tensors(output: object) -> list[torch.Tensor]:
    return list(output) if isinstance(output, tuple | list) else [output]


def relative_error(entry: BenchKernel, call: KernelCall) -> float:
    """The largest |kernel - reference| / |reference| over the outputs, the reference run first (the kernel
    may write its inputs); NaN anywhere gives NaN."""
    expected = [t.double() for t in _tensors(entry.reference(*call.args, **call.options))]
    got = [t.double() for t in _tensors(entry.kernel(*call.args, **call.options))]
    errors = [((g - e).norm() / e.norm()).item() for g, e in zip(got, expected, strict=True)]
    return max(errors) if all(math.isfinite(x) for x in errors) else math.nan


def input_sets(entry: BenchKernel, model: ModelShape, tokens: int, device: torch.device,
               footprint: int, l2_bytes: int, shared: tuple[object, ...] = ()) -> list[KernelCall]:
    count = min(MAX_INPUT_SETS, max(2, math.ceil(2 * l2_bytes / max(footprint, 1))))
    return [_with_shared(entry.inputs(model, tokens, device), shared) for _ in range(count)]


def _with_shared(call: KernelCall, shared: tuple[object, ...]) -> KernelCall:
    return KernelCall(call.args + shared, call.options) if shared else call


def time_per_call_ms(fn: Callable[..., object], calls: list[KernelCall], replays: int) -> float:
    """Median device milliseconds per call of `fn` over the rotated input sets, from CUDA graph replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles) off the default stream, as graph capture needs
        for call in calls[:3]:
            fn(*call.args, **call.options)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            fn(*call.args, **call.options)
    per_replay = _event_ms(graph.replay, replays)
    return per_replay / len(calls)


TimeFn = Callable[[Callable[..., object], list[KernelCall], int], float]


def bench_case(entry: BenchKernel, model: ModelShape, tokens: int, implementations: dict[str, Callable[..., object]],
               ceilings: Ceilings, device: torch.device, l2_bytes: int, replays: int,
               time_fn: TimeFn = time_per_call_ms) -> dict | None:
    """One kernel at one shape: the check, then each implementation timed over the same rotated inputs.
    None where the model has no such layer."""
    first = entry.inputs(model, tokens, device)
    if first is None:
        return None
    shared = entry.shared(model, device) if entry.shared is not None else ()
    workload = entry.workload(model, tokens, DTYPE)
    error = relative_error(entry, _with_shared(first, shared))
    del first
    calls = input_sets(entry, model, tokens, device, workload.bytes, l2_bytes, shared)
    times, failures = {}, {}
    for name, fn in implementations.items():
        try:
            times[name] = time_fn(fn, calls, replays)
        except Exception as error:  # one failing implementation must not cost the run's other figures
            failures[name] = repr(error)
    floor_ms = max(workload.bytes / ceilings.copy_gbps / 1e6, workload.flops / ceilings.matmul_tflops / 1e9)
    return {
        "kernel": entry.name, "model": model.name, "tokens": tokens, "bytes": workload.bytes,
        "flops": workload.flops, "relative_error": error, "passed": error <= entry.tolerance,
        "input_sets": len(calls), "rotated_mb": round(len(calls) * workload.bytes / 2**20, 1), "ms": times,
        "gbps": {name: workload.bytes / ms / 1e6 for name, ms in times.items()},
        "tflops": {name: workload.flops / ms / 1e9 for name, ms in times.items()},
        "floor_ms": floor_ms, "failures": failures,
    }


def _implementations(entry: BenchKernel, settings: GpuBenchSettings,
                     device: torch.device) -> dict[str, Callable[..., object]]:
    from kilotok.kernels.triton.pdl import pdl_enabled

    implementations = {"triton": entry.kernel, "torch": entry.reference}
    if entry.pdl and pdl_enabled(True, device):
        implementations["triton+pdl"] = functools.partial(entry.kernel, pdl=True)
    if settings.compile:
        implementations["torch.compile"] = torch.compile(entry.reference, dynamic=False)
    return implementations


def run_gpu_bench(settings: GpuBenchSettings,
                  save: Callable[[dict[str, object]], None] | None = None) -> dict[str, object]:
    """The whole run as one JSON-ready document, model by model in the order asked; `save` gets the document
    so far after every case, so a run stopped by the end of a GPU lease keeps what it measured."""
    import triton

    device = torch.device("cuda")
    torch.manual_seed(0)
    log("measuring the ceilings: a 1 GiB device copy, an 8192^3 bf16 matrix product")
    ceilings = measure_ceilings(device)
    properties = torch.cuda.get_device_properties(device)
    l2_bytes = getattr(properties, "L2_cache_size", 0) or DEFAULT_L2_BYTES
    records = []
    document = {"device": torch.cuda.get_device_name(device), "multiprocessors": properties.multi_processor_count,
                "torch_version": torch.__version__, "triton_version": triton.__version__, "l2_bytes": l2_bytes,
                "settings": asdict(settings), "ceilings": asdict(ceilings), "records": records}
    entries = [entry for entry in KERNELS if entry.name in settings.kernels]
    models = [model for name in settings.models for model in MODELS if model.name == name]
    implementations = {entry.name: _implementations(entry, settings, device) for entry in entries}
    cases = ordered_cases(entries, models, settings.tokens)
    # One compiled reference per case, specialized per shape (entries may share a reference function, whose
    # code object then holds several cases' graphs): raise Dynamo's recompile limits to fit them all.
    limit = len(cases) + 8
    with torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=max(limit, 256)):
        for entry, model, tokens in cases:
            log(f"{entry.name} {model.name} {tokens} tokens")
            try:
                record = bench_case(entry, model, tokens, implementations[entry.name], ceilings, device, l2_bytes,
                                    settings.replays)
            except Exception as error:  # a GPU lease is short: report it, go on
                record = {"kernel": entry.name, "model": model.name, "tokens": tokens, "error": repr(error)}
                log(f"  failed: {error!r}")
            torch.cuda.empty_cache()  # a MoE case's experts (tens of GB) must not crowd the next case
            if record is not None:
                records.append(record)
                if save is not None:
                    save(document)
    return document


def ordered_cases(entries: list[BenchKernel], models: list[ModelShape],
                  tokens: tuple[int, ...]) -> list[tuple[BenchKernel, ModelShape, int]]:
    """Every (kernel, model, tokens) case, model by model in the order asked, the issue's goal cases first
    (kernel_registry.GOAL_CASES)."""
    cases = [(entry, model, count) for model in models for count in tokens for entry in entries]
    return sorted(cases, key=lambda case: goal_rank(case[0].name, case[1].name, case[2]))


def report(document: dict[str, object]) -> list[tuple[str, ...]]:
    """Table rows: per case, the check, each implementation's microseconds, and the Triton kernel's GB/s,
    share of the copy ceiling, TFLOP/s and speed against torch.compile ("-" where one did not run)."""
    copy_gbps = document["ceilings"]["copy_gbps"]
    rows = [("kernel", "model", "tokens", "rel err", *(f"{name} us" for name in IMPLEMENTATIONS),
             "triton GB/s", "of copy", "triton TFLOP/s", "vs compile")]
    for record in document["records"]:
        case = (record["kernel"], record["model"], str(record["tokens"]))
        if "error" in record:
            rows.append((*case, "ERROR", *["-"] * (len(rows[0]) - 4)))
            continue
        ms, gbps, tflops = record["ms"], record["gbps"].get("triton"), record["tflops"].get("triton")
        versus = ms["torch.compile"] / ms["triton"] if {"triton", "torch.compile"} <= ms.keys() else None
        rows.append((
            *case, f"{record['relative_error']:.1e}" + ("" if record["passed"] else " FAIL"),
            *(f"{ms[name] * 1e3:.1f}" if name in ms else "-" for name in IMPLEMENTATIONS),
            _figure(gbps, "{:.0f}"), _figure(gbps and gbps / copy_gbps, "{:.0%}"), _figure(tflops, "{:.2f}"),
            _figure(versus, "{:.2f}x"),
        ))
    return rows


def _figure(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)
