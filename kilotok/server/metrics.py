"""Prometheus metrics under vLLM's names and labels (`model_name`, `engine`), so dashboards built for vLLM
work unchanged. Each app owns its registry (never the process-global one), so several servers, or tests,
can live in one process.

Two sources, neither re-derived from the other: the engine's own books (running and waiting requests,
KV-cache use, prefix-cache totals, preemptions, and the speculation counters of every finished request)
are read when /metrics is scraped; latencies and token counts are recorded on the engine thread from each
request's updates, and a finished request's end from the request itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kilotok.engine.llm_engine import LLMEngine
from kilotok.engine.output import RequestOutput
from kilotok.sequence import Sequence

# vLLM's buckets, so histogram quantiles line up with a vLLM deployment's.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort", "error")
"""vLLM's FinishReason values: "abort" is a client that left (or shutdown), "error" a request the server failed."""
LABELS = ["model_name", "engine"]


@dataclass
class RequestProgress:
    """What the metrics have already recorded of one running request."""

    arrival_time: float
    output_tokens: int = 0
    last_token_time: float | None = None


class EngineBooks(Collector):
    """The engine's gauges and cumulative counters, read at scrape time. Each value is one read of a
    number the engine thread keeps, so a scrape never waits on a step."""

    def __init__(self, engine: LLMEngine, labels: tuple[str, str], spec_depth: int) -> None:
        self.engine = engine
        self.labels = list(labels)
        self.spec_depth = spec_depth

    def collect(self) -> Iterator[Metric]:
        scheduler, blocks, spec = self.engine.scheduler, self.engine.block_manager, self.engine.spec_stats
        usable = max(1, blocks.num_usable_blocks)
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                          len(scheduler.running))
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                          len(scheduler.waiting))
        yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                          (usable - blocks.num_free_blocks) / usable)
        yield self._counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                            blocks.prefix_query_tokens)
        yield self._counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                            blocks.prefix_hit_tokens)
        yield self._counter("vllm:num_preemptions", "Cumulative number of preemptions.", scheduler.num_preemptions)
        yield self._counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", spec.target_forwards)
        yield self._counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", spec.drafted_tokens)
        yield self._counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.",
                            spec.accepted_tokens)
        per_position = CounterMetricFamily("vllm:spec_decode_num_accepted_tokens_per_pos",
                                           "Accepted tokens per draft position.", labels=[*LABELS, "position"])
        accepted = list(spec.accepted_by_depth)
        accepted += [0] * (self.spec_depth - len(accepted))
        for position, count in enumerate(accepted):
            per_position.add_metric([*self.labels, str(position)], count)
        yield per_position

    def _gauge(self, name: str, documentation: str, value: float) -> Metric:
        family = GaugeMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(self.labels, value)
        return family

    def _counter(self, name: str, documentation: str, value: float) -> Metric:
        family = CounterMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(self.labels, value)
        return family


class ServerMetrics:
    def __init__(self, model_name: str, engine: LLMEngine, spec_depth: int = 0) -> None:
        self.registry = CollectorRegistry()
        self._label_values = (model_name, "0")
        self.registry.register(EngineBooks(engine, self._label_values, spec_depth))
        self.prompt_tokens = self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = self._counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.ttft = self._histogram("vllm:time_to_first_token_seconds",
                                    "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = self._histogram("vllm:inter_token_latency_seconds",
                                   "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.e2e = self._histogram("vllm:e2e_request_latency_seconds",
                                   "Histogram of e2e request latency in seconds.", E2E_BUCKETS)
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          LABELS + ["finished_reason"], registry=self.registry)
        self.success = {reason: success.labels(*self._label_values, reason) for reason in FINISH_REASONS}

    def _counter(self, name: str, documentation: str) -> Counter:
        return Counter(name, documentation, LABELS, registry=self.registry).labels(*self._label_values)

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, LABELS, buckets=buckets,
                         registry=self.registry).labels(*self._label_values)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_output(self, progress: RequestProgress, seq: Sequence, output: RequestOutput) -> None:
        """Record what one step added to one request: its tokens, their latency, and its end."""
        new_tokens = output.num_output_tokens - progress.output_tokens
        if new_tokens > 0:
            if progress.output_tokens == 0:
                self.prompt_tokens.inc(output.num_prompt_tokens)
                self.ttft.observe(max(0.0, seq.first_token_time - progress.arrival_time))
            elif progress.last_token_time is not None:
                # One observation per step, as vLLM does: a speculative step that emits several tokens at
                # once is one gap for the user.
                self.itl.observe(max(0.0, seq.last_token_time - progress.last_token_time))
            self.generation_tokens.inc(new_tokens)
            progress.output_tokens = output.num_output_tokens
            progress.last_token_time = seq.last_token_time
        if output.finished:
            self.finish(progress, output.finish_reason, seq.last_token_time)

    def finish(self, progress: RequestProgress, reason: str, end_time: float | None) -> None:
        self.success[reason if reason in self.success else "abort"].inc()
        if end_time is not None:
            self.e2e.observe(max(0.0, end_time - progress.arrival_time))
