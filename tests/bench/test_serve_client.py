"""`kilotok bench serve`'s load generator and command line against a model-free stand-in server, and the
server process handling; what the stand-in records server-side is the oracle for concurrency and requests."""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from pathlib import Path

import pytest

from kilotok.bench.serve_client import make_client, run_closed_loop, served_model_id
from kilotok.bench.serve_server import ServerProcess, ServerStartError
from kilotok.cli.main import main
from tests.bench.fake_openai_server import ACCEPTED_PER_REQUEST, DRAFTS_PER_REQUEST, MODEL_ID, FakeServer

PROMPTS = [f"Tell me something about the number {number}." for number in range(5)]


async def closed_loop(url: str, conversations: list, concurrency: int, max_tokens: int, ask_model: bool = True):
    client = make_client(url, None)
    try:
        model_id = await served_model_id(client) if ask_model else None
        return model_id, *await run_closed_loop(client, MODEL_ID, conversations, concurrency, max_tokens)
    finally:
        await client.close()


def test_closed_loop_keeps_exactly_concurrency_requests_in_flight():
    conversations = [[{"role": "user", "content": prompt}] for prompt in PROMPTS * 2]
    with FakeServer() as server:
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


def test_a_server_that_dies_while_loading_is_reported_with_its_output():
    command = [sys.executable, "-c", "import sys; print('model file is truncated'); sys.exit(3)"]
    with ServerProcess(command, "http://127.0.0.1:9") as server, pytest.raises(ServerStartError) as error:
        server.wait_until_healthy(timeout_s=60)
    assert "status 3" in str(error.value) and "model file is truncated" in str(error.value)


def test_a_server_that_never_gets_ready_times_out_and_is_stopped():
    command = [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(120)"]
    server = ServerProcess(command, "http://127.0.0.1:9")
    with pytest.raises(ServerStartError, match="did not answer .* within 1 s") as error:
        server.wait_until_healthy(timeout_s=1)
    assert "still loading" in str(error.value)
    server.stop(grace_s=10)
    assert server.process.returncode is not None and not server.log_path.exists()
