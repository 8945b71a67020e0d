"""`kilotok bench soak` against the real server: many requests, some cancelled mid-stream, nothing lost
(its checks on their own are tested in tests/bench/test_soak.py)."""

from __future__ import annotations

from kilotok.bench.soak import SoakSettings, soak
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
