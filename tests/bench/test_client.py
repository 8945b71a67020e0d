"""The bench's shared client: the closed loop, the served model id, /metrics read as vLLM-shaped Prometheus
text (exported by prometheus_client itself, and hand-written with HELP/TYPE lines, label sets, _created
samples and look-alike names), and the `kilotok serve` child process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kilotok.bench.client import (
    ServerProcess,
    ServerStartError,
    ServerUnavailableError,
    counter_deltas,
    fetch_metrics,
    make_client,
    metric_totals,
    metric_totals_by_label,
    run_closed_loop,
    serve_command,
    served_model_id,
    shareable_settings,
)
from kilotok.bench.soak import SoakSettings
from tests.bench.fake_openai_server import MODEL_ID, FakeServer

DRAFTS = "vllm:spec_decode_num_drafts"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens"
GENERATED = "vllm:generation_tokens"
RUNNING = "vllm:num_requests_running"
COUNTERS = (DRAFTS, ACCEPTED, GENERATED)


def test_closed_loop_keeps_exactly_concurrency_in_flight_and_returns_results_in_request_order():
    in_flight, peak, started = 0, 0, []

    async def send(request: int) -> int:
        nonlocal in_flight, peak
        started.append(request)
        in_flight += 1
        peak = max(peak, in_flight)
        # Later requests finish sooner, so completion order differs from request order.
        await asyncio.sleep(0.001 * (10 - request))
        in_flight -= 1
        return request * 10

    results = asyncio.run(run_closed_loop(list(range(10)), 3, send))
    assert results == [request * 10 for request in range(10)]
    assert peak == 3 and started[:3] == [0, 1, 2] and sorted(started) == list(range(10))


def test_closed_loop_with_fewer_requests_than_users():
    assert asyncio.run(run_closed_loop([1, 2], 8, lambda request: asyncio.sleep(0, request))) == [1, 2]


async def _model_id(url: str) -> str:
    client = make_client(url, None)
    try:
        return await served_model_id(client)
    finally:
        await client.close()


def test_served_model_id_is_the_first_listed_and_an_unreachable_server_is_a_clear_error():
    with FakeServer() as server:
        assert asyncio.run(_model_id(server.url)) == MODEL_ID
    with pytest.raises(ServerUnavailableError, match="cannot list the models of the server"):
        asyncio.run(_model_id("http://127.0.0.1:9"))  # the discard port: nothing listens there


def exported(drafts: dict[str, int], accepted: dict[str, int], generated: int) -> str:
    """What a server built on prometheus_client exports after these increments, per engine label."""
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    draft_counter = Counter(DRAFTS, "Drafts.", labels, registry=registry)
    accepted_counter = Counter(ACCEPTED, "Accepted.", labels, registry=registry)
    per_position = Counter(f"{ACCEPTED}_per_pos", "Per position.", ["position"], registry=registry)
    Counter(GENERATED, "Generated.", registry=registry).inc(generated)
    Histogram("vllm:time_to_first_token_seconds", "TTFT.", registry=registry).observe(0.25)
    Gauge(RUNNING, "Running.", ["engine"], registry=registry).labels("0").set(3)
    for engine, count in drafts.items():
        draft_counter.labels("m", engine).inc(count)
    for engine, count in accepted.items():
        accepted_counter.labels("m", engine).inc(count)
    per_position.labels("0").inc(999)
    return generate_latest(registry).decode("utf-8")


def test_metrics_exported_by_prometheus_client_are_read_back_summed_over_labels():
    text = exported({"0": 30, "1": 12}, {"0": 51, "1": 9}, generated=400)
    totals = metric_totals(text, (*COUNTERS, RUNNING))
    assert totals[DRAFTS] == 42
    assert totals[ACCEPTED] == 60  # not the per-position look-alike
    assert totals[GENERATED] == 400
    assert totals[RUNNING] == 3  # a gauge: its plain-named sample
    assert metric_totals_by_label(text, DRAFTS, "engine") == {"0": 30, "1": 12}


def test_deltas_over_a_stretch_of_the_run():
    before = metric_totals(exported({"0": 30, "1": 12}, {"0": 51, "1": 9}, generated=400), COUNTERS)
    after = metric_totals(exported({"0": 70, "1": 12}, {"0": 131, "1": 19}, generated=900), COUNTERS)
    assert counter_deltas(before, after) == {DRAFTS: 40, ACCEPTED: 90, GENERATED: 500}


def test_a_counter_first_seen_after_the_stretch_counts_from_zero():
    assert counter_deltas({GENERATED: 5.0}, {GENERATED: 9.0, DRAFTS: 4.0}) == {GENERATED: 4.0, DRAFTS: 4.0}


HAND_WRITTEN = """\
# HELP vllm:spec_decode_num_drafts Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{model_name="smollm2-135m",engine="0"} 17.0
vllm:spec_decode_num_drafts_total{model_name="smollm2-135m",engine="1"} 3.0
vllm:spec_decode_num_drafts_created{model_name="smollm2-135m",engine="0"} 1.7e+09
# HELP vllm:spec_decode_num_accepted_tokens Number of accepted tokens.
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{model_name="smollm2-135m",engine="0"} 25.0
# HELP vllm:spec_decode_num_accepted_tokens_per_pos Accepted tokens per draft position.
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0",model_name="smollm2-135m"} 14.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{position="1",model_name="smollm2-135m"} 11.0
# HELP vllm:generation_tokens Generated tokens.
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="smollm2-135m",note="a \\"quoted\\" label, with {braces}"} 123.0
# HELP vllm:num_requests_running Requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="smollm2-135m"} 2.0
"""


def test_hand_written_exposition_is_valid_prometheus_text():
    names = {family.name for family in text_string_to_metric_families(HAND_WRITTEN)}
    assert {DRAFTS, RUNNING} <= names


def test_hand_written_exposition_reads_as_written():
    assert metric_totals(HAND_WRITTEN, COUNTERS) == {DRAFTS: 20.0, ACCEPTED: 25.0, GENERATED: 123.0}
    assert metric_totals(HAND_WRITTEN, (RUNNING, "vllm:absent")) == {RUNNING: 2.0}
    assert metric_totals_by_label(HAND_WRITTEN, DRAFTS, "engine") == {"0": 17.0, "1": 3.0}
    assert metric_totals_by_label(HAND_WRITTEN, ACCEPTED, "engine") == {"0": 25.0}
    assert metric_totals_by_label(HAND_WRITTEN, RUNNING, "engine") == {"": 2.0}


def test_fetch_metrics_reads_the_servers_exposition():
    with FakeServer() as server:
        assert f"{DRAFTS}_total" in fetch_metrics(server.url)
    with pytest.raises(OSError):
        fetch_metrics("http://127.0.0.1:9", timeout_s=5)


def test_serve_command_starts_kilotok_serve_with_the_settings_and_extra_flags():
    command = serve_command("m.gguf", "int4", "ngram", 8123, 16, "--no-compile --kv-cache-gb 2")
    assert command[:4] == [sys.executable, "-m", "kilotok.cli.main", "serve"]
    flags = dict(zip(command[4:-3:2], command[5:-3:2], strict=True))
    assert flags == {"--model": "m.gguf", "--dtype": "int4", "--spec": "ngram", "--host": "127.0.0.1",
                     "--port": "8123", "--max-num-seqs": "16"}
    assert command[-3:] == ["--no-compile", "--kv-cache-gb", "2"]


def test_shared_settings_keep_the_api_key_out_and_paths_as_text():
    record = shareable_settings(SoakSettings(api_key="secret", prompts_file=Path("p.jsonl")))
    assert record["api_key"] is None and record["prompts_file"] == "p.jsonl" and record["num_requests"] == 300


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
