"""`kilotok bench kernels`: on a CUDA device, every Triton kernel checked against its PyTorch reference and
timed beside it (eager and torch.compile) at SmolLM2-135M, Llama-3.1-8B and Llama 4 Maverick MoE-layer shapes,
next to the copy and matrix-product ceilings measured at the start (bench/kernels_gpu.py; the kernels are
listed in bench/kernel_registry.py). On the CPU: the low-bit linear op's time per call against ATen's int4,
int8 and bf16 paths on the default model's shapes, for several row counts, and the compiled decode step's
time by rows. `--mode` chooses; by default the GPU mode where CUDA is available.

CPU mode, per call: each projection shape of one decoder layer (fused qkv, o, fused gate/up, down) and the LM head,
with the model's own weights (the GGUF's Q4_1 blocks and its Q8_0 head). "projections" adds them up as a
decode step runs them (every layer once, the head once). Step times are the whole compiled decode graph
over that many rows, through whichever kernels this process uses: run once more with
KILOTOK_LOWBIT_KERNELS=0 to time ATen's kernels in the same graph.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kilotok.bench.report import machine_info, median_ms, table_lines, write_json
from kilotok.errors import InvalidRequestError

CLI_HELP = "check and time the Triton kernels on a GPU; on the CPU, the low-bit linear op and the decode step"
MODES = ("auto", "cpu", "gpu")
LAYER_SHAPES = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class KernelBenchSettings:
    model: str = "smollm2-135m"
    rows: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    repeats: int = 20
    steps: bool = True
    """Also time the compiled decode step by rows (compiles one graph per row bucket)."""

    def __post_init__(self) -> None:
        if not self.rows or min(self.rows) < 1 or self.repeats < 1:
            raise InvalidRequestError("--rows must be positive row counts and --repeats at least 1")


def _layers_by_kernel(model) -> dict[str, list[torch.nn.Module]]:
    """The model's own projections of layer 0 and its head, as each kernel holds them."""
    from kilotok.layers.linear import DenseLinear
    from kilotok.quant.int4 import Int4Linear
    from kilotok.quant.int8 import Int8Linear
    from kilotok.quant.lowbit import LowBitLinear, lowbit_available, unpack

    layer = model.layers[0]
    ours = [layer.get_submodule(name) for name in LAYER_SHAPES] + [model.lm_head]
    if not all(isinstance(linear, LowBitLinear) for linear in ours) or not lowbit_available():
        raise InvalidRequestError(f"{model.config.architecture} model's projections are not low-bit op layers")
    dense = []
    for linear in ours:
        w, offsets = unpack(linear.packed)
        w = (w if offsets is None else w + offsets[..., None]).reshape(linear.out_features, -1)
        dense.append(w[:, : linear.in_features])
    aten = [Int4Linear.from_float(w) for w in dense[:-1]] + [Int8Linear.from_float(dense[-1])]
    return {"lowbit": ours, "aten": aten, "bf16": [DenseLinear(w, None, torch.bfloat16) for w in dense]}


def time_calls(model, settings: KernelBenchSettings) -> list[dict[str, object]]:
    """Median ms per call for every (rows, kernel, shape), and the projections of a whole step."""
    kernels = _layers_by_kernel(model)
    num_layers = len(model.layers)
    records = []
    for rows in settings.rows:
        inputs = [torch.randn(rows, linear.in_features) for linear in kernels["lowbit"]]
        for kernel, linears in kernels.items():
            calls = [lambda linear=linear, x=x: linear(x) for linear, x in zip(linears, inputs, strict=True)]
            per_call = median_ms(calls, settings.repeats)
            step = num_layers * sum(per_call[:-1]) + per_call[-1]
            records.append({"rows": rows, "kernel": kernel, "per_call_ms": per_call, "projections_ms": step})
    return records


def time_steps(llm, settings: KernelBenchSettings) -> list[dict[str, float]]:
    """Median ms of the compiled decode step over padding rows with a 64-key window, by row count."""
    from kilotok.kernels.attention import KEY_WINDOW_ALIGN
    from kilotok.runner.step_inputs import warm_up_rows

    runner = llm.engine.runner
    records = []
    for rows in settings.rows:
        inputs = warm_up_rows(rows, runner.block_size, runner.max_blocks_per_seq, KEY_WINDOW_ALIGN, runner.device)
        (ms,) = median_ms([lambda inputs=inputs: runner.decode_rows(*inputs)], settings.repeats)
        records.append({"rows": rows, "step_ms": ms})
    return records


def report(calls: list[dict[str, object]], steps: list[dict[str, float]], kernels_in_use: str) -> str:
    lines = [] if calls else ["(per-call times need the low-bit op)"]
    if calls:
        lines += ["projections of one decode step (every layer and the head), median ms:"] + _calls_table(calls)
    if steps:
        lines += ["", f"compiled decode step ({kernels_in_use}), median ms:"]
        lines += table_lines([("rows", "step ms", "vs 1 row"),
                              *((str(s["rows"]), f"{s['step_ms']:.2f}", f"{s['step_ms'] / steps[0]['step_ms']:.2f}x")
                                for s in steps)])
    return "\n".join(lines)


def _calls_table(calls: list[dict[str, object]]) -> list[str]:
    kernels = list(dict.fromkeys(record["kernel"] for record in calls))
    table = [("rows", *kernels, "lowbit vs 1 row")]
    by_rows: dict[int, dict[str, float]] = {}
    for record in calls:
        by_rows.setdefault(record["rows"], {})[record["kernel"]] = record["projections_ms"]
    first = by_rows[min(by_rows)]["lowbit"]
    for rows, times in by_rows.items():
        table.append((str(rows), *(f"{times[k]:.2f}" for k in kernels), f"{times['lowbit'] / first:.2f}x"))
    return table_lines(table)


def run_kernel_bench(settings: KernelBenchSettings) -> dict[str, object]:
    from kilotok import LLM
    from kilotok.quant.lowbit import lowbit_available

    llm = LLM(settings.model, progress=False, compile=settings.steps)
    model = llm.engine.runner.model
    with torch.inference_mode():
        # Without the op (KILOTOK_LOWBIT_KERNELS=0, or a processor without it) only the steps are timed.
        calls = time_calls(model, settings) if lowbit_available() else []
        if settings.steps:
            llm.engine.runner.compile_buckets(range(1, max(settings.rows) + 1))
        steps = time_steps(llm, settings) if settings.steps else []
    kernels_in_use = "lowbit" if lowbit_available() else "aten"
    print(report(calls, steps, kernels_in_use))
    return {"machine": machine_info(), "settings": asdict(settings), "threads": torch.get_num_threads(),
            "step_kernels": kernels_in_use, "calls": calls, "steps": steps}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = KernelBenchSettings()
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="gpu: the Triton kernels on a CUDA device; cpu: the low-bit op and the decode step; "
                             "auto: gpu where CUDA is available (default: %(default)s)")
    _add_gpu_arguments(parser.add_argument_group("GPU mode"))
    _add_cpu_arguments(parser.add_argument_group("CPU mode"), defaults)
    parser.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")


def _add_gpu_arguments(group: argparse._ArgumentGroup) -> None:
    from kilotok.bench.kernels_gpu import GpuBenchSettings

    defaults = GpuBenchSettings()
    group.add_argument("--kernels", nargs="+", default=list(defaults.kernels), help="(default: %(default)s)")
    group.add_argument("--models", nargs="+", default=list(defaults.models), help="(default: %(default)s)")
    group.add_argument("--tokens", type=int, nargs="+", default=list(defaults.tokens),
                       help="token counts (default: %(default)s)")
    group.add_argument("--replays", type=int, default=defaults.replays,
                       help="timed CUDA graph replays per measurement (default: %(default)s)")
    group.add_argument("--no-compile", action="store_true", help="skip timing torch.compile of the references")


def _add_cpu_arguments(group: argparse._ArgumentGroup, defaults: KernelBenchSettings) -> None:
    group.add_argument("--model", default=defaults.model, help="a GGUF with Q4 weights (default: %(default)s)")
    group.add_argument("--rows", type=int, nargs="+", default=list(defaults.rows),
                       help="row counts to time (default: %(default)s)")
    group.add_argument("--repeats", type=int, default=defaults.repeats,
                       help="timed calls per measurement (default: %(default)s)")
    group.add_argument("--no-steps", action="store_true", help="skip the compiled decode step timings")


def resolve_mode(requested: str) -> str:
    """`gpu` needs a CUDA device and Triton; `auto` takes the GPU mode where both are there."""
    from kilotok.kernels.backend import triton_importable

    on_gpu = torch.cuda.is_available()
    if requested == "gpu" and not on_gpu:
        raise InvalidRequestError("bench kernels --mode gpu needs a CUDA device and this machine has none; "
                                  "--mode cpu times the CPU's low-bit op")
    if requested == "gpu" and not triton_importable():
        raise InvalidRequestError("bench kernels --mode gpu needs the triton package: pip install 'kilotok[triton]'")
    if requested == "auto":
        return "gpu" if on_gpu and triton_importable() else "cpu"
    return requested


def _run_gpu(args: argparse.Namespace) -> dict[str, object]:
    from kilotok.bench.kernels_gpu import GpuBenchSettings, report, run_gpu_bench

    settings = GpuBenchSettings(kernels=tuple(args.kernels), models=tuple(args.models), tokens=tuple(args.tokens),
                                replays=args.replays, compile=not args.no_compile)
    save = (lambda so_far: write_json(args.json_out, so_far)) if args.json_out else None
    document = run_gpu_bench(settings, save)
    ceilings = document["ceilings"]
    print(f"{document['device']}: copy {ceilings['copy_gbps']:.0f} GB/s, bf16 matmul "
          f"{ceilings['matmul_tflops']:.0f} TFLOP/s (measured now)")
    print("\n".join(table_lines(report(document))))
    return document


def run_from_args(args: argparse.Namespace) -> int:
    if resolve_mode(args.mode) == "gpu":
        document = _run_gpu(args)
    else:
        settings = KernelBenchSettings(model=args.model, rows=tuple(args.rows), repeats=args.repeats,
                                       steps=not args.no_steps)
        document = run_kernel_bench(settings)
    if args.json_out:
        write_json(args.json_out, document)
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0
