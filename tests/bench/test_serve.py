"""`kilotok bench serve`: its command line rejects bad settings before any server starts; its load
generator and command line run against a model-free stand-in server, whose server-side record is the oracle
for concurrency and requests; the acceptance length it reads from the counters; and, slow, the whole
command against the real `kilotok serve` on the default model."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kilotok.bench.client import is_healthy, make_client, served_model_id
from kilotok.bench.serve import (
    GENERATION_TOKENS,
    NUM_ACCEPTED_TOKENS,
    NUM_DRAFTS,
    acceptance_length,
    fetch_counters,
    time_closed_loop,
)
from kilotok.cli.main import main
from tests.bench.fake_openai_server import ACCEPTED_PER_REQUEST, DRAFTS_PER_REQUEST, MODEL_ID, FakeServer

PROMPTS = [f"Tell me something about the number {number}." for number in range(5)]
KILOTOK = [sys.executable, "-m", "kilotok.cli.main"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--concurrency", "1,x"], "--concurrency must be comma-separated integers"),
    (["--concurrency", "0,2"], "--concurrency levels must be distinct and at least 1"),
    (["--concurrency", "2,2"], "--concurrency levels must be distinct and at least 1"),
    (["--concurrency", "1,4", "--num-prompts", "3"], r"--num-prompts \(3\) must be at least the largest"),
    (["--max-tokens", "1"], "--max-tokens must be at least 2"),
    (["--append"], "--append needs --out"),
    (["--prompts-file", "/nonexistent/prompts.jsonl"], "prompt file /nonexistent/prompts.jsonl not found"),
    (["--url", "http://127.0.0.1:9", "--concurrency", "1"], "cannot list the models of the server"),
])
def test_bad_settings_are_clear_errors(flags: list[str], message: str, capsys):
    assert main(["bench", "serve", *flags]) == 2
    assert re.search(message, capsys.readouterr().err)


async def closed_loop(url: str, conversations: list, concurrency: int, max_tokens: int, ask_model: bool = True):
    client = make_client(url, None)
    try:
        model_id = await served_model_id(client) if ask_model else None
        return model_id, *await time_closed_loop(client, MODEL_ID, conversations, concurrency, max_tokens)
    finally:
        await client.close()


def test_closed_loop_keeps_exactly_concurrency_requests_in_flight():
    conversations = [[{"role": "user", "content": prompt}] for prompt in PROMPTS * 2]
    with FakeServer() as server:
        server.state.hold_until_arrivals = 3
        model_id, timings, wall_s = asyncio.run(closed_loop(server.url, conversations, 3, 9))
    state = server.state
    assert model_id == MODEL_ID
    assert len(state.bodies) == len(timings) == 10
    assert state.in_flight_at_arrival[:3] == [1, 2, 3]
    assert max(state.in_flight_at_arrival) == 3
    for body in state.bodies:
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["temperature"] == 0 and body["max_tokens"] == 9 and "ignore_eos" not in body
    assert collections.Counter(body["messages"][0]["content"] for body in state.bodies) == collections.Counter(
        PROMPTS * 2
    )
    assert all(timing.error is None and timing.output_tokens == 9 for timing in timings)
    assert all(timing.sent_s < timing.first_token_s < timing.last_token_s <= timing.done_s for timing in timings)
    assert wall_s >= max(timing.done_s for timing in timings) - min(timing.sent_s for timing in timings)


def test_a_refused_connection_is_a_failed_request_not_a_crash():
    conversations = [[{"role": "user", "content": "hi"}]] * 2
    nowhere = "http://127.0.0.1:9"  # the discard port: nothing listens there
    _, timings, _ = asyncio.run(closed_loop(nowhere, conversations, 2, 4, ask_model=False))
    assert len(timings) == 2 and all(timing.error for timing in timings)


def bench(url: str, prompts_file: Path, out: Path, *extra: str) -> int:
    return main(["bench", "serve", "--url", url, "--prompts-file", str(prompts_file), "--concurrency", "1,3",
                 "--num-prompts", "4", "--max-tokens", "6", "--out", str(out), *extra])


def test_command_line_measures_each_level_and_appends_configurations(tmp_path: Path, capsys):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PROMPTS))
    out, plot = tmp_path / "results.json", tmp_path / "frontier.png"
    with FakeServer() as server:
        assert bench(server.url, prompts_file, out, "--spec", "eagle3", "--label", "eagle3") == 0
        server.state.speculative = False
        assert bench(server.url, prompts_file, out, "--label", "plain", "--append", "--plot", str(plot)) == 0
    assert "kilotok bench serve: plain" in capsys.readouterr().out
    eagle, plain = json.loads(out.read_text())["configurations"]
    assert (eagle["label"], plain["label"]) == ("eagle3", "plain")
    for configuration in (eagle, plain):
        assert [level["concurrency"] for level in configuration["levels"]] == [1, 3]
        assert all(level["num_requests"] == 4 and level["output_tokens"] == 24 for level in configuration["levels"])
    eagle_acceptance = 1 + ACCEPTED_PER_REQUEST / DRAFTS_PER_REQUEST
    assert [level["acceptance_length"] for level in eagle["levels"]] == [eagle_acceptance] * 2
    assert [level["acceptance_length"] for level in plain["levels"]] == [1.0, 1.0]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # Measured requests walk the prompt file in order across levels (8 of 5 prompts: it wraps once);
    # warm-up requests use the fixed latency prompts, never the measured ones.
    measured = [body["messages"][-1]["content"] for body in server.state.bodies
                if body["messages"][-1]["content"] in PROMPTS]
    assert collections.Counter(measured) == collections.Counter((PROMPTS + PROMPTS[:3]) * 2)
    assert len(server.state.bodies) - len(measured) == 2 * (1 + 3)


def test_acceptance_length_is_vllms_one_plus_accepted_over_drafts():
    assert acceptance_length({NUM_DRAFTS: 40.0, NUM_ACCEPTED_TOKENS: 90.0}) == pytest.approx(1 + 90 / 40)


def test_no_drafts_is_one_token_per_forward_and_no_counters_is_unknown():
    assert acceptance_length({NUM_DRAFTS: 0.0, NUM_ACCEPTED_TOKENS: 0.0}) == 1.0
    assert acceptance_length({GENERATION_TOKENS: 50.0}) is None


def test_counters_are_read_from_the_server_or_none_when_it_cannot_be_reached():
    with FakeServer() as server:
        assert fetch_counters(server.url) == {NUM_DRAFTS: 0.0, NUM_ACCEPTED_TOKENS: 0.0}
    assert fetch_counters("http://127.0.0.1:9") is None


def _serve_flags() -> str:
    """--no-compile when the server offers it: the compile warm-up would triple this test's time."""
    help_text = subprocess.run([*KILOTOK, "serve", "--help"], capture_output=True, text=True, timeout=300).stdout
    return "--no-compile" if "--no-compile" in help_text else ""


@pytest.mark.slow
def test_bench_serve_runs_against_the_real_server(tmp_path: Path):
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    command = [*KILOTOK, "bench", "serve", "--concurrency", "1,2", "--num-prompts", "2", "--max-tokens", "8",
               f"--server-args={_serve_flags()}", "--out", str(out), "--plot", str(plot)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (configuration,) = json.loads(out.read_text())["configurations"]
    levels = configuration["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        assert level["num_requests"] == 2 and level["num_failed"] == 0
        assert 2 <= level["output_tokens"] <= 2 * 8
        assert level["median_ttft_s"] > 0 and level["total_output_tokens_per_s"] > 0
        assert level["acceptance_length"] == 1.0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "kilotok bench serve" in finished.stdout
    port = configuration["config"]["server_command"][configuration["config"]["server_command"].index("--port") + 1]
    assert not is_healthy(f"http://127.0.0.1:{port}", timeout_s=2)
