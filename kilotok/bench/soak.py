"""`kilotok bench soak`: nothing is lost under load with cancellations.

Starts `kilotok serve` (or targets --url) and sends --num-requests streamed chat requests, --concurrency
at a time, of random lengths up to --max-tokens; half share a system prompt (so the prefix cache shares
blocks), and --cancel-fraction of them are cancelled by the client at a random point of their stream.
Then it checks that every request not cancelled completed, that the server counted every request under
one finish reason, and that its running and waiting requests and KV-cache use are back to 0. Exits 1
with the problems listed if anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from kilotok.bench.serve_prompts import HELD_OUT_PROMPTS, load_chat_prompts
from kilotok.bench.serve_settings import SPEC_METHODS, add_server_arguments
from kilotok.errors import InvalidRequestError

CLI_HELP = "send many requests, cancelling some mid-stream, and check that the server loses nothing"
IDLE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SoakSettings:
    model: str = "smollm2-135m"
    dtype: str = "auto"
    spec: str = "none"
    num_requests: int = 300
    concurrency: int = 16
    cancel_fraction: float = 0.3
    max_tokens: int = 64
    seed: int = 0
    url: str | None = None
    api_key: str | None = None
    server_args: str = ""
    server_timeout_s: float = 900.0
    prompts_file: Path = HELD_OUT_PROMPTS

    def __post_init__(self) -> None:
        if self.spec not in SPEC_METHODS:
            raise InvalidRequestError(f"--spec must be one of {', '.join(SPEC_METHODS)}, got {self.spec!r}")
        if self.num_requests < 1 or self.concurrency < 1:
            raise InvalidRequestError("--num-requests and --concurrency must be at least 1")
        if not 0.0 <= self.cancel_fraction <= 1.0:
            raise InvalidRequestError(f"--cancel-fraction must be between 0 and 1, got {self.cancel_fraction}")
        if self.max_tokens < 4:
            raise InvalidRequestError(f"--max-tokens must be at least 4, got {self.max_tokens}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SoakSettings()
    add_server_arguments(parser)
    parser.add_argument("--num-requests", type=int, default=defaults.num_requests,
                        help="requests to send (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--cancel-fraction", type=float, default=defaults.cancel_fraction,
                        help="share of requests the client cancels mid-stream (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="largest max_tokens of a request; each draws its own (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the request plan")
    parser.add_argument("--out", type=Path, help="write the outcome as JSON to this file")


def soak(settings: SoakSettings, base_url: str) -> dict:
    from kilotok.bench.serve_client import make_client, served_model_id
    from kilotok.bench.soak_checks import find_problems, read_books, wait_until_idle
    from kilotok.bench.soak_requests import plan_requests, run_requests

    requests = plan_requests(load_chat_prompts(settings.prompts_file), settings.num_requests,
                             settings.max_tokens, settings.cancel_fraction, settings.seed)

    async def run() -> list:
        client = make_client(base_url, settings.api_key)
        try:
            return await run_requests(client, await served_model_id(client), requests, settings.concurrency)
        finally:
            await client.close()

    before = read_books(base_url, settings.api_key)
    start_s = time.perf_counter()
    outcomes = asyncio.run(run())
    wall_s = time.perf_counter() - start_s
    after = wait_until_idle(base_url, settings.api_key, IDLE_TIMEOUT_S)
    return {
        "requests": len(outcomes),
        "cancelled": sum(outcome.cancelled for outcome in outcomes),
        "completed": sum(outcome.completed for outcome in outcomes),
        "rejected": [outcome.error for outcome in outcomes if outcome.rejected],
        "finish_reasons": dict(Counter(o.finish_reason for o in outcomes if o.completed)),
        "wall_s": round(wall_s, 1),
        "server_finished": {reason: after.finished.get(reason, 0.0) - before.finished.get(reason, 0.0)
                            for reason in after.finished},
        "server_preemptions": after.preemptions - before.preemptions,
        "server_gauges_after": after.gauges,
        "problems": find_problems(outcomes, before, after),
    }


def run_from_args(args: argparse.Namespace) -> int:
    from kilotok.bench.serve_server import ServerProcess, free_port, serve_command

    settings = SoakSettings(
        model=args.model, dtype=args.dtype, spec=args.spec, num_requests=args.num_requests,
        concurrency=args.concurrency, cancel_fraction=args.cancel_fraction, max_tokens=args.max_tokens,
        seed=args.seed, url=args.url, api_key=args.api_key, server_args=args.server_args,
        server_timeout_s=args.server_timeout, prompts_file=args.prompts_file,
    )
    if settings.url is not None:
        report = soak(settings, settings.url)
    else:
        port = free_port()
        command = serve_command(settings.model, settings.dtype, settings.spec, port, settings.concurrency,
                                settings.server_args)
        with ServerProcess(command, f"http://127.0.0.1:{port}") as server:
            print(f"starting the server: {' '.join(command)}", file=sys.stderr, flush=True)
            server.wait_until_healthy(settings.server_timeout_s)
            report = soak(settings, server.base_url)
    report["settings"] = {**asdict(settings), "prompts_file": str(settings.prompts_file), "api_key": None}
    print(json.dumps({key: value for key, value in report.items() if key != "settings"}, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    for problem in report["problems"]:
        print(f"LOST: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0
