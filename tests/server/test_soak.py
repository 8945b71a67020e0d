"""`kilotok bench soak` against the real server: many requests, some cancelled mid-stream, nothing lost;
and its checks catch the losses they are there for."""

from __future__ import annotations

from kilotok.bench.soak import SoakSettings, soak
from kilotok.bench.soak_checks import RUNNING, ServerBooks, find_problems
from kilotok.bench.soak_requests import PlannedRequest, RequestOutcome, plan_requests
from tests.server.harness import API_KEY


def test_cancelled_and_finished_requests_leave_the_server_idle(served):
    settings = SoakSettings(num_requests=40, concurrency=6, cancel_fraction=0.4, max_tokens=12, seed=3,
                            api_key=API_KEY)
    report = soak(settings, served.root_url)
    assert report["problems"] == []
    assert report["cancelled"] > 5 and report["completed"] > 10
    assert report["cancelled"] + report["completed"] == 40
    assert report["server_finished"]["abort"] >= 1
    assert served.engine.block_manager.num_free_blocks == served.engine.block_manager.num_usable_blocks


def test_the_plan_is_seeded_and_cancels_the_asked_share():
    conversations = [[{"role": "user", "content": f"question {n}"}] for n in range(7)]
    first = plan_requests(conversations, 400, 32, 0.25, seed=1)
    assert first == plan_requests(conversations, 400, 32, 0.25, seed=1)
    cancelled = sum(request.cancel_after_chunks is not None for request in first)
    assert 70 <= cancelled <= 130
    assert all(4 <= request.max_tokens <= 32 for request in first)


def _outcome(cancelled: bool, error: str | None = None) -> RequestOutcome:
    request = PlannedRequest([{"role": "user", "content": "hi"}], 8, 2 if cancelled else None)
    return RequestOutcome(request, cancelled, None if cancelled else "length", None if cancelled else 8, error)


def test_the_checks_name_each_kind_of_loss():
    idle = {name: 0.0 for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                                   "vllm:kv_cache_usage_perc")}
    before = ServerBooks(idle, {"length": 10.0, "abort": 0.0})
    outcomes = [_outcome(False), _outcome(True)]
    assert find_problems(outcomes, before, ServerBooks(idle, {"length": 11.0, "abort": 1.0})) == []
    failed = find_problems([_outcome(False, "APIConnectionError"), _outcome(True)], before,
                           ServerBooks(idle, {"length": 11.0, "abort": 1.0}))
    assert len(failed) == 1 and "APIConnectionError" in failed[0]
    busy = find_problems(outcomes, before, ServerBooks({**idle, RUNNING: 1.0}, {"length": 11.0, "abort": 1.0}))
    assert any(RUNNING in problem for problem in busy)
    unbalanced = find_problems(outcomes, before, ServerBooks(idle, {"length": 11.0, "abort": 0.0}))
    assert any("admitted 2" in problem for problem in unbalanced)
    refused = RequestOutcome(outcomes[0].planned, cancelled=False, rejected=True, error="too long")
    assert find_problems([*outcomes, refused], before, ServerBooks(idle, {"length": 11.0, "abort": 1.0})) == []
