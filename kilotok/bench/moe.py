"""Micro-benchmark of the routed-expert layer: kilotok's grouped path (sort the (token, expert) pairs, run
each expert once over its group) against a naive per-expert masked loop (every expert over every token,
weighted by a mask of its routing weights), at several token counts. Random weights and inputs; routing
from random logits, so experts are hit about uniformly."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from kilotok.bench.report import median_ms
from kilotok.kernels.moe import moe_experts
from kilotok.layers.moe import route

CLI_HELP = "time the grouped MoE expert layer against a naive per-expert masked loop"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class MoeBenchSettings:
    hidden: int = 1024
    intermediate: int = 512
    experts: int = 16
    top_k: int = 1
    dtype: str = "bf16"
    batches: tuple[int, ...] = (1, 8, 64)
    repeats: int = 20
    threads: int | None = None
    """torch threads (None: torch's default)."""


def naive_masked_moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
                     down: torch.Tensor) -> torch.Tensor:
    """The baseline: one pass per expert over all tokens, weighted by the expert's routing weight (0 for
    tokens not routed to it)."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    rows = x.to(gate_up.dtype)
    for expert in range(gate_up.shape[0]):
        mask_weight = (weights * (experts == expert)).sum(dim=-1, keepdim=True)
        gate, up = F.linear(rows, gate_up[expert]).chunk(2, dim=-1)
        out += mask_weight * F.linear(F.silu(gate) * up, down[expert]).float()
    return out.to(x.dtype)


@torch.inference_mode()
def run_moe_bench(settings: MoeBenchSettings) -> list[dict[str, float]]:
    """One row per token count: median milliseconds of each path and the largest difference between them."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    generator = torch.Generator().manual_seed(0)
    dtype = DTYPES[settings.dtype]
    scale = settings.hidden**-0.5
    gate_up = (torch.randn(settings.experts, 2 * settings.intermediate, settings.hidden, generator=generator)
               * scale).to(dtype)
    down = (torch.randn(settings.experts, settings.hidden, settings.intermediate, generator=generator)
            * settings.intermediate**-0.5).to(dtype)
    rows = []
    for tokens in settings.batches:
        x = torch.randn(tokens, settings.hidden, generator=generator).to(dtype)
        logits = torch.randn(tokens, settings.experts, generator=generator)
        weights, experts = route(logits, settings.top_k, "softmax", renormalize=True)
        grouped = partial(moe_experts, x, weights, experts, gate_up, down, gate_on_input=False)
        naive = partial(naive_masked_moe, x, weights, experts, gate_up, down)
        difference = (grouped().float() - naive().float()).abs().max().item()
        grouped_ms, naive_ms = median_ms([grouped, naive], settings.repeats)
        rows.append({"tokens": tokens, "grouped_ms": grouped_ms, "naive_ms": naive_ms,
                     "speedup": naive_ms / grouped_ms, "max_abs_diff": difference})
    return rows


def format_rows(settings: MoeBenchSettings, rows: list[dict[str, float]]) -> str:
    lines = [f"MoE experts: hidden {settings.hidden}, intermediate {settings.intermediate}, {settings.experts} "
             f"experts, top-{settings.top_k}, {settings.dtype}, {torch.get_num_threads()} threads, "
             f"median of {settings.repeats}",
             f"{'tokens':>6} {'grouped ms':>11} {'naive ms':>9} {'speedup':>8} {'max |diff|':>11}"]
    for row in rows:
        lines.append(f"{row['tokens']:>6} {row['grouped_ms']:>11.3f} {row['naive_ms']:>9.3f} "
                     f"{row['speedup']:>7.1f}x {row['max_abs_diff']:>11.2e}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = MoeBenchSettings()
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="model width (default: %(default)s)")
    parser.add_argument("--intermediate", type=int, default=defaults.intermediate,
                        help="expert intermediate size (default: %(default)s)")
    parser.add_argument("--experts", type=int, default=defaults.experts, help="experts (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="experts per token (default: %(default)s)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=defaults.dtype,
                        help="weight and activation dtype (default: %(default)s)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(defaults.batches),
                        help="token counts to time (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="timed calls per measurement (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")


def run_from_args(args: argparse.Namespace) -> int:
    settings = MoeBenchSettings(hidden=args.hidden, intermediate=args.intermediate, experts=args.experts,
                                top_k=args.top_k, dtype=args.dtype, batches=tuple(args.batches),
                                repeats=args.repeats, threads=args.threads)
    print(format_rows(settings, run_moe_bench(settings)))
    return 0
