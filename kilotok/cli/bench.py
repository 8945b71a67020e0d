"""`kilotok bench KIND`: one module per kind under kilotok.bench, each exposing CLI_HELP, add_arguments
and run_from_args, so a new kind (serve, ...) is a new module plus its name here."""

from __future__ import annotations

import argparse
import importlib

BENCH_KINDS = ("latency", "serve", "soak", "moe", "spec-policy", "kernels", "parallel", "gpu")


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="measure kilotok's speed",
        description="Measure kilotok's speed, optionally against baseline engines.",
    )
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for kind in BENCH_KINDS:
        module = importlib.import_module(f"kilotok.bench.{kind.replace('-', '_')}")
        parser = kinds.add_parser(
            kind, help=module.CLI_HELP, description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        parser.set_defaults(run=module.run_from_args)
