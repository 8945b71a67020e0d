"""`kilotok bench parallel`: the same greedy requests at several tensor-parallel sizes (ranks spawned by
the engine, on CPUs over gloo; tp 1 runs on the CPU too, so every size runs on the same device): decode
tokens/s per user, and the time rank 0 spends per engine step inside all-reduces (waiting for the slowest
rank included), with whether the tokens equal tp 1's. Sizes the model cannot shard (its heads, KV heads,
widths or vocabulary do not split) are skipped with the reason; by default sizes above the machine's cores
are left out too."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import torch

from kilotok.bench.report import machine_info, table_lines
from kilotok.errors import ModelFormatError
from kilotok.llm import LLM
from kilotok.models.registry import load_checkpoint, model_config
from kilotok.parallel.layout import ParallelConfig, check_splits
from kilotok.sampling_params import SamplingParams

CLI_HELP = "decode speed and all-reduce time per step at tensor parallel 1, 2, 4, 8"
DEFAULT_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ParallelBenchSettings:
    model: str = "smollm2-135m"
    dtype: str = "auto"
    sizes: tuple[int, ...] = DEFAULT_SIZES
    users: int = 1
    """Requests decoded together."""
    prompt_tokens: int = 32
    max_tokens: int = 64
    compile: bool = False


@dataclass(frozen=True)
class SizeResult:
    tensor_parallel_size: int
    tokens_per_s_per_user: float
    steps: int
    all_reduces_per_step: float
    all_reduce_ms_per_step: float
    token_ids: list[list[int]]


def usable_sizes(settings: ParallelBenchSettings, explicit: bool) -> tuple[list[int], dict[int, str]]:
    """The sizes to run, and the skipped ones with why."""
    config = model_config(load_checkpoint(settings.model, progress=False).config)
    cores = os.cpu_count() or 1
    run, skipped = [], {}
    for size in settings.sizes:
        if not explicit and size > cores:
            skipped[size] = f"the machine has {cores} cores"
            continue
        try:
            check_splits(config, ParallelConfig(size))
        except ModelFormatError as error:
            skipped[size] = str(error)
            continue
        run.append(size)
    return run, skipped


def run_size(settings: ParallelBenchSettings, size: int) -> SizeResult:
    params = SamplingParams(temperature=0.0, max_tokens=settings.max_tokens, ignore_eos=True)
    with LLM(settings.model, device="cpu", dtype=settings.dtype, compile=settings.compile, progress=False,
             tensor_parallel_size=size) as llm:
        vocab = llm.engine.model_config.vocab_size
        prompt = torch.randint(vocab // 8, vocab, (settings.prompt_tokens,),
                               generator=torch.Generator().manual_seed(0)).tolist()
        llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        stats = llm.engine.runner.group.comm.stats if size > 1 else None
        before = (stats.all_reduce_seconds, stats.all_reduce_calls) if stats else (0.0, 0)
        engine = llm.engine
        seqs = [engine.add_request(prompt, params) for _ in range(settings.users)]
        finished, steps = {}, 0
        while engine.has_unfinished():
            steps += 1
            for seq, output in engine.step():
                if output.finished:
                    finished[seq.seq_id] = output
        seconds = stats.all_reduce_seconds - before[0] if stats else 0.0
        calls = stats.all_reduce_calls - before[1] if stats else 0
    outputs = [finished[seq.seq_id] for seq in seqs]
    return SizeResult(size, sum(o.decode_tokens_per_s for o in outputs) / len(outputs), steps, calls / steps,
                      1000 * seconds / steps, [list(o.token_ids) for o in outputs])


def format_results(settings: ParallelBenchSettings, results: list[SizeResult], skipped: dict[int, str]) -> str:
    machine = machine_info()
    reference = results[0].token_ids if results and results[0].tensor_parallel_size == 1 else None
    rows = [("tp", "tok/s per user", "steps", "all-reduces/step", "all-reduce ms/step", "same tokens as tp 1")]
    for result in results:
        same = "-" if reference is None else ("yes" if result.token_ids == reference else "NO")
        rows.append((str(result.tensor_parallel_size), f"{result.tokens_per_s_per_user:.1f}", str(result.steps),
                     f"{result.all_reduces_per_step:.1f}", f"{result.all_reduce_ms_per_step:.2f}", same))
    lines = [f"{settings.model} ({settings.dtype}), {settings.users} user(s), {settings.prompt_tokens}-token prompt, "
             f"{settings.max_tokens} greedy tokens, compile {settings.compile}; {machine['cpu_model']}, "
             f"{machine['logical_cpus']} logical CPUs, torch {machine['torch_version']}, "
             f"load {machine['load_average_1m']}", *table_lines(rows)]
    lines += [f"tp {size} skipped: {why}" for size, why in skipped.items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ParallelBenchSettings()
    parser.add_argument("--model", default=defaults.model, help="model (default: %(default)s)")
    parser.add_argument("--dtype", default=defaults.dtype, help="weight format (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="tensor-parallel sizes (default: 1 2 4 8, up to the machine's GPUs or cores)")
    parser.add_argument("--users", type=int, default=defaults.users, help="requests decoded together")
    parser.add_argument("--prompt-tokens", type=int, default=defaults.prompt_tokens)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--compile", action="store_true", help="compile rank 0's decode step")


def run_from_args(args: argparse.Namespace) -> int:
    settings = ParallelBenchSettings(model=args.model, dtype=args.dtype, sizes=tuple(args.sizes or DEFAULT_SIZES),
                                     users=args.users, prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens,
                                     compile=args.compile)
    sizes, skipped = usable_sizes(settings, explicit=args.sizes is not None)
    results = []
    for size in sizes:
        started = time.perf_counter()
        results.append(run_size(settings, size))
        print(f"kilotok: tp {size} done in {time.perf_counter() - started:.0f} s", flush=True)
    print(format_results(settings, results, skipped))
    return 0
