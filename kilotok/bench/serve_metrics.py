"""The server's Prometheus counters, read before and after a level, and the acceptance length they imply.

The server names its counters as vLLM does (so vLLM dashboards work on kilotok), and exports each counter
`name` as the sample `name_total`, one per label set; a level's figure is the difference of the label-summed
values before and after it, so whatever the server did before the level (warm-up, earlier levels) cancels.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

NUM_DRAFTS = "vllm:spec_decode_num_drafts"
NUM_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
NUM_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
PROMPT_TOKENS = "vllm:prompt_tokens"
BENCH_COUNTERS = (NUM_DRAFTS, NUM_DRAFT_TOKENS, NUM_ACCEPTED_TOKENS, GENERATION_TOKENS, PROMPT_TOKENS)

CounterSnapshot = dict[str, float]


def parse_counters(exposition: str, names: tuple[str, ...] = BENCH_COUNTERS) -> CounterSnapshot:
    """Each named counter's value summed over its label sets; counters the text lacks are left out.

    Samples are matched by name, not by family: how a parser groups `name_total` under a TYPE line depends
    on whether that line spells the suffix. A counter's value is its `name_total` sample (its `name_created`
    timestamp is not a count); a sample of the plain name is read too, as an untyped export would give it.
    """
    sample_names = {f"{name}_total": name for name in names} | {name: name for name in names}
    totals: CounterSnapshot = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            name = sample_names.get(sample.name)
            if name is not None:
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def counter_deltas(before: CounterSnapshot, after: CounterSnapshot) -> CounterSnapshot:
    """How much each counter present after the level grew during it (one absent before started at 0)."""
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def acceptance_length(deltas: CounterSnapshot) -> float | None:
    """Tokens emitted per target decode forward, by vLLM's definition: 1 + accepted tokens / drafts.

    1.0 when no draft was made (speculation off, or scaled back to nothing at this batch size); None when
    the server exports no speculative counters at all, so "unknown" is never reported as "no gain".
    """
    if NUM_DRAFTS not in deltas:
        return None
    drafts = deltas[NUM_DRAFTS]
    if drafts <= 0:
        return 1.0
    return 1.0 + deltas.get(NUM_ACCEPTED_TOKENS, 0.0) / drafts


def fetch_counters(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> CounterSnapshot | None:
    """The server's counters now, or None when it serves no /metrics or cannot be reached (a server that
    died fails the level's requests too, and that failure is the one reported)."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return parse_counters(response.read().decode("utf-8"))
    except OSError:  # urllib's HTTP and connection errors included
        return None
