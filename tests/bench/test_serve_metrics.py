"""Reading the server's /metrics: counters exported by prometheus_client itself, and a hand-written
exposition shaped like vLLM's (HELP/TYPE lines, label sets, _created samples, look-alike names)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kilotok.bench.serve_metrics import (
    GENERATION_TOKENS,
    NUM_ACCEPTED_TOKENS,
    NUM_DRAFTS,
    acceptance_length,
    counter_deltas,
    parse_counters,
)


def exported(drafts: dict[str, int], accepted: dict[str, int], generated: int) -> str:
    """What a server built on prometheus_client exports after these increments, per engine label."""
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    draft_counter = Counter(NUM_DRAFTS, "Drafts.", labels, registry=registry)
    accepted_counter = Counter(NUM_ACCEPTED_TOKENS, "Accepted.", labels, registry=registry)
    per_position = Counter(f"{NUM_ACCEPTED_TOKENS}_per_pos", "Per position.", ["position"], registry=registry)
    Counter(GENERATION_TOKENS, "Generated.", registry=registry).inc(generated)
    Histogram("vllm:time_to_first_token_seconds", "TTFT.", registry=registry).observe(0.25)
    for engine, count in drafts.items():
        draft_counter.labels("m", engine).inc(count)
    for engine, count in accepted.items():
        accepted_counter.labels("m", engine).inc(count)
    per_position.labels("0").inc(999)
    return generate_latest(registry).decode("utf-8")


def test_counters_exported_by_prometheus_client_are_read_back_summed_over_labels():
    text = exported({"0": 30, "1": 12}, {"0": 51, "1": 9}, generated=400)
    counters = parse_counters(text)
    assert counters[NUM_DRAFTS] == 42
    assert counters[NUM_ACCEPTED_TOKENS] == 60  # not the per-position look-alike
    assert counters[GENERATION_TOKENS] == 400


def test_deltas_over_a_level_give_vllm_acceptance_length():
    before = parse_counters(exported({"0": 30, "1": 12}, {"0": 51, "1": 9}, generated=400))
    after = parse_counters(exported({"0": 70, "1": 12}, {"0": 131, "1": 19}, generated=900))
    deltas = counter_deltas(before, after)
    assert deltas[NUM_DRAFTS] == 40 and deltas[NUM_ACCEPTED_TOKENS] == 90 and deltas[GENERATION_TOKENS] == 500
    assert acceptance_length(deltas) == pytest.approx(1 + 90 / 40)


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
    assert {"vllm:spec_decode_num_drafts", "vllm:num_requests_running"} <= names


def test_hand_written_exposition_reads_as_written():
    counters = parse_counters(HAND_WRITTEN)
    assert counters == {NUM_DRAFTS: 20.0, NUM_ACCEPTED_TOKENS: 25.0, GENERATION_TOKENS: 123.0}
    assert acceptance_length(counter_deltas({}, counters)) == pytest.approx(1 + 25 / 20)


def test_no_drafts_is_one_token_per_forward_and_no_counters_is_unknown():
    assert acceptance_length({NUM_DRAFTS: 0.0, NUM_ACCEPTED_TOKENS: 0.0}) == 1.0
    assert acceptance_length({GENERATION_TOKENS: 50.0}) is None


def test_a_counter_first_seen_after_the_level_counts_from_zero():
    assert counter_deltas({GENERATION_TOKENS: 5.0}, {GENERATION_TOKENS: 9.0, NUM_DRAFTS: 4.0}) == {
        GENERATION_TOKENS: 4.0, NUM_DRAFTS: 4.0,
    }
