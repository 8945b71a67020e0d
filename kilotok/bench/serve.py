"""`kilotok bench serve`: per-user speed and total throughput of `kilotok serve` at several concurrencies.

Starts the server (or targets --url), then at each concurrency C warms up with C short requests and keeps
exactly C streamed, greedy chat requests in flight until --num-prompts have finished. Per level it reports
output tokens/s per user (median and p10), time to first token (median and p99), total output tokens/s,
and the acceptance length from the server's /metrics. --out writes the figures as JSON, --plot draws the
latency-throughput frontier; --append adds this configuration to an existing JSON, so runs with and
without speculation land on one chart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kilotok.bench.serve_prompts import load_chat_prompts
from kilotok.bench.serve_settings import ServeBenchSettings, add_server_arguments, parse_concurrency
from kilotok.errors import InvalidRequestError

CLI_HELP = "measure tokens/s per user and total throughput of `kilotok serve` at several concurrencies"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServeBenchSettings()
    add_server_arguments(parser)
    parser.add_argument("--concurrency", default=",".join(map(str, defaults.concurrency)),
                        help="comma-separated requests in flight per level (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=None,
                        help="requests measured per level (default: max(2 x concurrency, 8))")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="max_tokens of every request, greedy, EOS honoured (default: %(default)s)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the short warm-up before each level")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--plot", type=Path, help="draw the frontier of every configuration in the results")
    parser.add_argument("--label", default=None, help="this configuration's name in the JSON and the plot")
    parser.add_argument("--append", action="store_true",
                        help="add this configuration to the existing --out file instead of overwriting it")


def run_from_args(args: argparse.Namespace) -> int:
    # Imported here: the openai client and matplotlib would add a second to every other kilotok command.
    from kilotok.bench.serve_plot import write_frontier_plot
    from kilotok.bench.serve_report import format_table, merge_configuration, read_results, write_results
    from kilotok.bench.serve_runner import run_serve_bench

    if args.append and args.out is None:
        raise InvalidRequestError("--append needs --out: the JSON file to add this configuration to")
    settings = ServeBenchSettings(
        model=args.model, dtype=args.dtype, spec=args.spec, concurrency=parse_concurrency(args.concurrency),
        num_prompts=args.num_prompts, max_tokens=args.max_tokens, url=args.url, api_key=args.api_key,
        label=args.label, warmup=not args.no_warmup, server_timeout_s=args.server_timeout,
        server_args=args.server_args, prompts_file=args.prompts_file,
    )
    # Checked before the server starts, so a bad file costs no model loading.
    existing = read_results(args.out) if args.append and args.out.exists() else []
    conversations = load_chat_prompts(settings.prompts_file)
    result = run_serve_bench(settings, conversations)
    print(format_table(result))
    configurations = merge_configuration(existing, result)
    if args.out is not None:
        write_results(args.out, configurations)
        _log(f"wrote {args.out}")
    if args.plot is not None:
        write_frontier_plot(args.plot, configurations)
        _log(f"wrote {args.plot}")
    return 1 if any(level.num_failed for level in result.levels) else 0
