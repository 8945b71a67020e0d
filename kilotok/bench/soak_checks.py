"""What `kilotok bench soak` checks once its requests are done: the server's books balance and it is idle.

Idle means no request running or waiting and no KV block referenced (blocks the prefix cache keeps for
reuse are free: the next request that needs room evicts them). The books balance when the server counted
every request it was sent under exactly one finish reason, aborts for the ones the client walked away
from (a cancellation that raced a request's natural end counts as that end). A request the server
refused up front with a 400 (one that could never fit the KV cache) was never admitted: it is reported,
not lost.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from kilotok.bench.soak_requests import RequestOutcome

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
REQUEST_SUCCESS = "vllm:request_success"
PREEMPTIONS = "vllm:num_preemptions"
IDLE_GAUGES = (RUNNING, WAITING, KV_USAGE)


@dataclass(frozen=True)
class ServerBooks:
    gauges: dict[str, float]
    finished: dict[str, float]
    """Requests the server finished, by finish reason (stop, length, abort, error)."""
    preemptions: float = 0.0


def read_books(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> ServerBooks:
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    gauges: dict[str, float] = {}
    finished: dict[str, float] = {}
    preemptions = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in IDLE_GAUGES:
                gauges[sample.name] = gauges.get(sample.name, 0.0) + sample.value
            elif sample.name == f"{PREEMPTIONS}_total":
                preemptions += sample.value
            elif sample.name == f"{REQUEST_SUCCESS}_total":
                reason = sample.labels.get("finished_reason", "")
                finished[reason] = finished.get(reason, 0.0) + sample.value
    return ServerBooks(gauges, finished, preemptions)


def wait_until_idle(base_url: str, api_key: str | None, timeout_s: float, poll_s: float = 0.5) -> ServerBooks:
    """The books once every idle gauge reads 0, or as they stand when `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        books = read_books(base_url, api_key)
        if all(books.gauges.get(name, 0.0) == 0.0 for name in IDLE_GAUGES) or time.monotonic() > deadline:
            return books
        time.sleep(poll_s)


def find_problems(outcomes: list[RequestOutcome], before: ServerBooks, after: ServerBooks) -> list[str]:
    """Every way the run lost something, in words; empty when nothing was lost."""
    problems = [f"request {index} was not cancelled but did not complete: {outcome.error}"
                for index, outcome in enumerate(outcomes)
                if not outcome.cancelled and not outcome.rejected and outcome.error]
    missing = [name for name in IDLE_GAUGES if name not in after.gauges]
    if missing:
        problems.append(f"the server exports no {', '.join(missing)}")
    problems += [f"{name} is {after.gauges[name]:g} once the run is over, not 0"
                 for name in IDLE_GAUGES if after.gauges.get(name, 0.0) != 0.0]
    finished = {reason: after.finished.get(reason, 0.0) - before.finished.get(reason, 0.0)
                for reason in after.finished}
    admitted = sum(not outcome.rejected for outcome in outcomes)
    if sum(finished.values()) != admitted:
        problems.append(f"the server finished {sum(finished.values()):g} requests, by reason {finished}, "
                        f"but admitted {admitted}")
    cancelled = sum(outcome.cancelled for outcome in outcomes)
    if finished.get("abort", 0.0) > cancelled:
        problems.append(f"the server aborted {finished['abort']:g} requests but only {cancelled} were cancelled")
    if finished.get("error", 0.0):
        problems.append(f"the server failed {finished['error']:g} requests with an error")
    return problems
