"""How `kilotok bench serve` and `kilotok bench soak` reach a server: the official `openai` client in a
closed loop, the server's Prometheus `/metrics`, and `kilotok serve` started as a child process.

A closed loop (a new request starts the moment one finishes) holds the server at exactly the concurrency
being measured, which an open loop with a request rate cannot promise on a machine this slow.

The server names its metrics as vLLM does (so vLLM dashboards work on kilotok), and exports each counter
`name` as the sample `name_total`, one per label set; what happened over a stretch of the run is the
difference of the label-summed values before and after it, so whatever the server did earlier cancels.

A started server's output goes to a log file rather than a pipe (a pipe nobody reads fills up and blocks
the server mid-benchmark); when the server dies or never gets ready, the error quotes the log's tail.

openai and prometheus_client are imported where they are used: every kilotok command imports this module
to build its parser, and would otherwise pay for loading them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from kilotok.bench.prompts import Message
from kilotok.bench.report import log
from kilotok.errors import KilotokError
from kilotok.speculative.config import SPEC_METHODS

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk
    from prometheus_client.samples import Sample

# Requests stream for minutes at high concurrency on two CPU cores; a benchmark waits rather than retries.
REQUEST_TIMEOUT_S = 3600.0
PLACEHOLDER_API_KEY = "kilotok-bench"
LOG_TAIL_LINES = 30

MetricTotals = dict[str, float]
Request = TypeVar("Request")
Result = TypeVar("Result")


class ServerUnavailableError(KilotokError):
    """The benchmarked server cannot be reached, or rejects every request the benchmark sends."""


class ServerStartError(KilotokError):
    """The benchmarked server exited, or did not answer /health in time."""


class ServerTarget(Protocol):
    """The settings of a bench that start (or reach) a server and pick the prompts it is sent."""

    model: str
    dtype: str
    spec: str
    url: str | None
    api_key: str | None
    server_args: str
    server_timeout_s: float
    prompts_file: Path


def add_server_arguments(parser: argparse.ArgumentParser, defaults: ServerTarget) -> None:
    """The flags that pick the server a bench loads (or reaches) and the prompts it sends."""
    parser.add_argument("--model", default=defaults.model, help="model the server loads (default: %(default)s)")
    parser.add_argument("--dtype", default=defaults.dtype, help="the server's weight format (default: auto)")
    parser.add_argument("--spec", choices=SPEC_METHODS, default=defaults.spec,
                        help="speculative decoding method of the server (default: none)")
    parser.add_argument("--url", default=None,
                        help="use the server already running here (e.g. http://127.0.0.1:8000) instead of "
                             "starting one")
    parser.add_argument("--api-key", default=None, help="API key of the --url server, if it wants one")
    parser.add_argument("--prompts-file", type=Path, default=defaults.prompts_file,
                        help="JSONL (optionally .gz) of {\"prompt\"} or {\"messages\"} lines "
                             "(default: the held-out split of data/smollm2-135m-distill)")
    parser.add_argument("--server-timeout", type=float, default=defaults.server_timeout_s,
                        help="seconds to wait for the started server's /health (default: %(default)s)")
    parser.add_argument("--server-args", default=defaults.server_args,
                        help="extra flags for the started `kilotok serve`, as one string with an equals sign: "
                             "--server-args='--no-compile --kv-cache-gb 2'")


def shareable_settings(settings: ServerTarget) -> dict[str, object]:
    """The settings as JSON values, without the API key: results get shared, keys must not."""
    return {**asdict(settings), "prompts_file": str(settings.prompts_file), "api_key": None}


def make_client(base_url: str, api_key: str | None) -> AsyncOpenAI:
    from openai import AsyncOpenAI

    # No retries: a silently retried request would count its failed attempt's time as the answer's.
    return AsyncOpenAI(
        base_url=f"{base_url.rstrip('/')}/v1", api_key=api_key or PLACEHOLDER_API_KEY,
        max_retries=0, timeout=REQUEST_TIMEOUT_S,
    )


async def served_model_id(client: AsyncOpenAI) -> str:
    """The id the server lists first under /v1/models: requests must name the model as the server does."""
    import openai

    try:
        page = await client.models.list()
    except openai.OpenAIError as error:
        raise ServerUnavailableError(
            f"cannot list the models of the server at {client.base_url}: {type(error).__name__}: {error}"
        ) from None
    if not page.data:
        raise ServerUnavailableError(f"the server at {client.base_url} lists no model under /models")
    return page.data[0].id


async def open_chat_stream(
    client: AsyncOpenAI, model: str, messages: list[Message], max_tokens: int
) -> AsyncStream[ChatCompletionChunk]:
    """A greedy chat completion, streamed, whose last chunk carries the server's token counts."""
    return await client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True},
        temperature=0.0, max_tokens=max_tokens,
    )


async def run_closed_loop(
    requests: list[Request], concurrency: int, send: Callable[[Request], Awaitable[Result]]
) -> list[Result]:
    """`send` every request with `concurrency` in flight until all have finished; results in request order."""
    pending: Iterator[tuple[int, Request]] = iter(enumerate(requests))
    results: list[Result | None] = [None] * len(requests)

    async def user() -> None:
        # Each simulated user sends its next request as soon as its previous answer has finished.
        for index, request in pending:
            results[index] = await send(request)

    await asyncio.gather(*(user() for _ in range(min(concurrency, len(requests)))))
    return [result for result in results if result is not None]


def fetch_metrics(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> str:
    """The server's /metrics exposition text; raises OSError (urllib's HTTP errors included) when it fails."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read().decode("utf-8")


def _matching_samples(exposition: str, names: tuple[str, ...]) -> Iterator[tuple[str, Sample]]:
    """(metric name, sample) for each sample of the named metrics.

    Samples are matched by name, not by family: how a parser groups `name_total` under a TYPE line depends
    on whether that line spells the suffix. A counter's value is its `name_total` sample (its `name_created`
    timestamp is not a count); a sample of the plain name is read too, as a gauge or an untyped export has it.
    """
    from prometheus_client.parser import text_string_to_metric_families

    sample_names = {f"{name}_total": name for name in names} | {name: name for name in names}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            name = sample_names.get(sample.name)
            if name is not None:
                yield name, sample


def metric_totals(exposition: str, names: tuple[str, ...]) -> MetricTotals:
    """Each named metric's value summed over its label sets; metrics the text lacks are left out."""
    totals: MetricTotals = {}
    for name, sample in _matching_samples(exposition, names):
        totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def metric_totals_by_label(exposition: str, name: str, label: str) -> MetricTotals:
    """One metric's value summed per value of `label` (an absent label counts as "")."""
    totals: MetricTotals = {}
    for _, sample in _matching_samples(exposition, (name,)):
        key = sample.labels.get(label, "")
        totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def counter_deltas(before: MetricTotals, after: MetricTotals) -> MetricTotals:
    """How much each counter present after a stretch of the run grew during it (one absent before started
    at 0)."""
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_healthy(base_url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serve_command(
    model: str, dtype: str, spec: str, port: int, max_num_seqs: int, extra_args: str = ""
) -> list[str]:
    return [
        sys.executable, "-m", "kilotok.cli.main", "serve", "--model", model, "--dtype", dtype, "--spec", spec,
        "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_num_seqs),
        *shlex.split(extra_args),
    ]


class ServerProcess:
    """A running `kilotok serve`; use as a context manager so it is stopped however the benchmark ends."""

    def __init__(self, command: list[str], base_url: str) -> None:
        self.command = command
        self.base_url = base_url
        log_fd, log_name = tempfile.mkstemp(prefix="kilotok-bench-serve-", suffix=".log")
        self.log_path = Path(log_name)
        with os.fdopen(log_fd, "wb") as log_file:
            # A session of its own: the terminal's Ctrl-C reaches the benchmark, which then stops the server.
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_until_healthy(self, timeout_s: float, poll_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"the server exited with status {self.process.returncode} before it was ready.\n"
                    f"command: {shlex.join(self.command)}\nlast lines of its output:\n{self.log_tail()}"
                )
            if is_healthy(self.base_url):
                return
            time.sleep(poll_s)
        raise ServerStartError(
            f"the server did not answer {self.base_url}/health within {timeout_s:.0f} s "
            f"(raise --server-timeout if loading is just slow).\ncommand: {shlex.join(self.command)}\n"
            f"last lines of its output:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (the server finishes or cancels what runs, then exits), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def running_server(target: ServerTarget, max_num_seqs: int) -> Iterator[ServerProcess]:
    """`kilotok serve` as `target` describes it, on a free loopback port, healthy; stopped on exit."""
    port = free_port()
    command = serve_command(target.model, target.dtype, target.spec, port, max_num_seqs, target.server_args)
    with ServerProcess(command, f"http://127.0.0.1:{port}") as server:
        log(f"starting the server: {' '.join(command)}")
        server.wait_until_healthy(target.server_timeout_s)
        yield server
