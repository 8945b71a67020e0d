"""GET /metrics, read with prometheus_client's own text parser: vLLM's names and labels, and counters that
move by exactly what the openai client's usage says a request cost."""

from __future__ import annotations

import copy

import pytest

from tests.server.harness import MODEL, metric_value, running_server, scrape_metrics

pytestmark = pytest.mark.slow

VLLM_FAMILIES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:spec_decode_num_drafts": "counter",
    "vllm:spec_decode_num_draft_tokens": "counter",
    "vllm:spec_decode_num_accepted_tokens": "counter",
    "vllm:spec_decode_num_accepted_tokens_per_pos": "counter",
}


def test_metrics_use_vllm_names_types_and_labels(served):
    samples = scrape_metrics(served)
    for name, kind in VLLM_FAMILIES.items():
        assert samples.get(("TYPE", name)) == kind, name
    for reason in ("stop", "length", "abort"):
        assert metric_value(samples, "vllm:request_success_total", finished_reason=reason) >= 0


def test_counters_move_by_what_a_request_cost(served, client):
    before = scrape_metrics(served)
    answer = client.completions.create(model=MODEL, prompt="Count: one, two, three,", max_tokens=7,
                                       temperature=0, extra_body={"ignore_eos": True})
    after = scrape_metrics(served)

    def moved(name: str, **labels) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert moved("vllm:prompt_tokens_total") == answer.usage.prompt_tokens
    assert moved("vllm:generation_tokens_total") == answer.usage.completion_tokens == 7
    assert moved("vllm:request_success_total", finished_reason="length") == 1
    assert moved("vllm:time_to_first_token_seconds_count") == 1
    # Without speculation every step adds one token: one inter-token gap per token after the first.
    assert moved("vllm:inter_token_latency_seconds_count") == 6
    assert moved("vllm:e2e_request_latency_seconds_count") == 1
    assert moved("vllm:prefix_cache_queries_total") >= answer.usage.prompt_tokens
    assert metric_value(after, "vllm:kv_cache_usage_perc") == 0
    assert metric_value(after, "vllm:num_requests_running") == 0
    assert metric_value(after, "vllm:num_requests_waiting") == 0


def test_prefix_cache_hits_on_a_repeated_long_prompt(served, client):
    prompt = "A long shared system prompt about the weather. " * 8
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    before = scrape_metrics(served)
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    after = scrape_metrics(served)
    hits = metric_value(after, "vllm:prefix_cache_hits_total") - metric_value(before, "vllm:prefix_cache_hits_total")
    block_size = served.engine.block_manager.block_size
    # Every full block but the one holding the last prompt token comes from the cache.
    assert hits == (answer.usage.prompt_tokens - 1) // block_size * block_size


@pytest.fixture(scope="module")
def ngram_served():
    with running_server(spec="ngram") as server:
        yield server


def test_speculative_counters_match_the_engines_own_totals(ngram_served):
    """Prompt lookup on a repetitive prompt drafts and accepts; the vLLM counters must carry exactly the
    engine's SpecStats (drafts = verify steps, positions 0-based by draft depth)."""
    engine = ngram_served.engine
    stats_before = copy.deepcopy(engine.spec_stats)
    before = scrape_metrics(ngram_served)
    ngram_served.client().completions.create(model=MODEL, prompt="red green blue, " * 6, max_tokens=16,
                                             temperature=0, extra_body={"ignore_eos": True})
    after = scrape_metrics(ngram_served)
    stats = engine.spec_stats

    def moved(name: str, **labels) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert stats.accepted_tokens > stats_before.accepted_tokens, "the prompt gave speculation nothing to accept"
    assert moved("vllm:spec_decode_num_drafts_total") == stats.target_forwards - stats_before.target_forwards
    assert moved("vllm:spec_decode_num_draft_tokens_total") == stats.drafted_tokens - stats_before.drafted_tokens
    accepted = moved("vllm:spec_decode_num_accepted_tokens_total")
    assert accepted == stats.accepted_tokens - stats_before.accepted_tokens
    per_position = [moved("vllm:spec_decode_num_accepted_tokens_per_pos_total", position=str(p))
                    for p in range(engine.config.spec.depth)]
    assert sum(per_position) == accepted
    assert per_position == sorted(per_position, reverse=True)
