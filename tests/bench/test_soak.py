"""`kilotok bench soak` without a model: the seeded request plan, requests read to the end, cancelled or
refused by a stand-in server, the server's books read from /metrics, and the checks that name each kind of
loss. tests/server/test_soak.py runs it against the real server."""

from __future__ import annotations

import asyncio

import pytest

from kilotok.bench.client import make_client, run_closed_loop
from kilotok.bench.soak import (
    KV_USAGE,
    RUNNING,
    WAITING,
    PlannedRequest,
    RequestOutcome,
    ServerBooks,
    SoakSettings,
    books_from_metrics,
    find_problems,
    plan_requests,
    run_request,
)
from kilotok.errors import InvalidRequestError
from tests.bench.fake_openai_server import MAX_TOKENS_LIMIT, MODEL_ID, FakeServer

IDLE = {RUNNING: 0.0, WAITING: 0.0, KV_USAGE: 0.0}


def test_the_plan_is_seeded_and_cancels_the_asked_share():
    conversations = [[{"role": "user", "content": f"question {n}"}] for n in range(7)]
    first = plan_requests(conversations, 400, 32, 0.25, seed=1)
    assert first == plan_requests(conversations, 400, 32, 0.25, seed=1)
    assert first != plan_requests(conversations, 400, 32, 0.25, seed=2)
    cancelled = sum(request.cancel_after_chunks is not None for request in first)
    assert 70 <= cancelled <= 130
    assert all(4 <= request.max_tokens <= 32 for request in first)
    shared = sum(request.messages[0]["role"] == "system" for request in first)
    assert 150 <= shared <= 250
    assert [request.messages[-1] for request in first[:7]] == [c[0] for c in conversations]


@pytest.mark.parametrize("bad", [{"num_requests": 0}, {"concurrency": 0}, {"cancel_fraction": 1.5},
                                 {"max_tokens": 3}, {"spec": "medusa"}])
def test_settings_reject_bad_values(bad):
    with pytest.raises(InvalidRequestError):
        SoakSettings(**bad)


def _request(max_tokens: int, cancel_after_chunks: int | None = None) -> PlannedRequest:
    return PlannedRequest([{"role": "user", "content": "hi"}], max_tokens, cancel_after_chunks)


async def _run(url: str, requests: list[PlannedRequest]) -> list[RequestOutcome]:
    client = make_client(url, None)
    try:
        return await run_closed_loop(requests, 2, lambda request: run_request(client, MODEL_ID, request))
    finally:
        await client.close()


def test_requests_complete_are_cancelled_or_are_refused_as_planned():
    requests = [_request(6), _request(8, 0), _request(9, 2), _request(MAX_TOKENS_LIMIT + 1), _request(5)]
    with FakeServer() as server:
        complete, cancelled_at_start, cancelled_midway, refused, short = asyncio.run(_run(server.url, requests))
    assert (complete.completed, complete.finish_reason, complete.output_tokens) == (True, "length", 6)
    assert (short.completed, short.output_tokens, short.planned) == (True, 5, requests[-1])
    assert cancelled_at_start.cancelled and cancelled_midway.cancelled
    assert not cancelled_midway.completed and cancelled_midway.error is None
    assert refused.rejected and not refused.cancelled and not refused.completed and "never fit" in refused.error


def test_a_refused_connection_is_an_error_not_a_cancellation():
    (outcome,) = asyncio.run(_run("http://127.0.0.1:9", [_request(6)]))
    assert not outcome.cancelled and not outcome.rejected and not outcome.completed
    assert outcome.error.startswith("APIConnectionError")


BOOKS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m",engine="0"} 1.0
vllm:num_requests_running{model_name="m",engine="1"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:request_success counter
vllm:request_success_total{model_name="m",finished_reason="stop"} 4.0
vllm:request_success_total{model_name="m",finished_reason="abort"} 2.0
vllm:request_success_total{model_name="m",engine="1",finished_reason="stop"} 1.0
vllm:request_success_created{model_name="m",finished_reason="stop"} 1.7e+09
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 3.0
"""


def test_books_are_read_from_the_metrics():
    assert books_from_metrics(BOOKS) == ServerBooks({RUNNING: 3.0, WAITING: 0.0, KV_USAGE: 0.25},
                                                    {"stop": 5.0, "abort": 2.0}, preemptions=3.0)
    assert books_from_metrics("") == ServerBooks({}, {}, 0.0)


def _outcome(cancelled: bool, error: str | None = None) -> RequestOutcome:
    request = PlannedRequest([{"role": "user", "content": "hi"}], 8, 2 if cancelled else None)
    return RequestOutcome(request, cancelled, None if cancelled else "length", None if cancelled else 8, error)


def test_the_checks_name_each_kind_of_loss():
    before = ServerBooks(IDLE, {"length": 10.0, "abort": 0.0})
    outcomes = [_outcome(False), _outcome(True)]
    assert find_problems(outcomes, before, ServerBooks(IDLE, {"length": 11.0, "abort": 1.0})) == []
    failed = find_problems([_outcome(False, "APIConnectionError"), _outcome(True)], before,
                           ServerBooks(IDLE, {"length": 11.0, "abort": 1.0}))
    assert len(failed) == 1 and "APIConnectionError" in failed[0]
    busy = find_problems(outcomes, before, ServerBooks({**IDLE, RUNNING: 1.0}, {"length": 11.0, "abort": 1.0}))
    assert any(RUNNING in problem for problem in busy)
    unbalanced = find_problems(outcomes, before, ServerBooks(IDLE, {"length": 11.0, "abort": 0.0}))
    assert any("admitted 2" in problem for problem in unbalanced)
    refused = RequestOutcome(outcomes[0].planned, cancelled=False, rejected=True, error="too long")
    assert find_problems([*outcomes, refused], before, ServerBooks(IDLE, {"length": 11.0, "abort": 1.0})) == []


def test_the_checks_catch_missing_gauges_extra_aborts_and_errors():
    before = ServerBooks(IDLE, {"length": 0.0})
    after = ServerBooks({RUNNING: 0.0}, {"length": 0.0, "abort": 1.0, "error": 1.0})
    problems = find_problems([_outcome(False)], before, after)
    assert any(WAITING in problem and KV_USAGE in problem and "exports no" in problem for problem in problems)
    assert any("aborted 1 requests but only 0 were cancelled" in problem for problem in problems)
    assert any("failed 1 requests with an error" in problem for problem in problems)
