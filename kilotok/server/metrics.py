"""Prometheus metrics under vLLM's names and labels (`model_name`, `engine`), so dashboards built for vLLM
work unchanged. Each app owns its registry (never the process-global one), so several servers, or tests,
can live in one process. Everything is recorded on the engine thread; prometheus_client is thread-safe,
so /metrics renders from the event loop at any time."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kilotok.engine.outputs import RequestOutput
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
    """What the metrics have already counted for one running request."""

    arrival_time: float
    output_tokens: int = 0
    last_token_time: float | None = None
    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_by_depth: list[int] = field(default_factory=list)


class ServerMetrics:
    def __init__(self, model_name: str, spec_depth: int = 0) -> None:
        self.registry = CollectorRegistry()
        self._label_values = (model_name, "0")
        self._last_prefix_queries = 0
        self._last_prefix_hits = 0
        self.running = self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_queries = self._counter("vllm:prefix_cache_queries",
                                            "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = self._counter("vllm:prefix_cache_hits",
                                         "Prefix cache hits, in terms of number of cached tokens.")
        self.preemptions = self._counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self._last_preemptions = 0
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
        self.drafts = self._counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.")
        self.draft_tokens = self._counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.")
        self.accepted_tokens = self._counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.")
        self._accepted_per_pos_family = Counter(
            "vllm:spec_decode_num_accepted_tokens_per_pos", "Accepted tokens per draft position.",
            LABELS + ["position"], registry=self.registry)
        for position in range(spec_depth):
            self._accepted_at(position)

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, LABELS, registry=self.registry).labels(*self._label_values)

    def _counter(self, name: str, documentation: str) -> Counter:
        return Counter(name, documentation, LABELS, registry=self.registry).labels(*self._label_values)

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, LABELS, buckets=buckets,
                         registry=self.registry).labels(*self._label_values)

    def _accepted_at(self, position: int) -> Counter:
        return self._accepted_per_pos_family.labels(*self._label_values, str(position))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_engine(self, engine) -> None:
        """Scheduler gauges and the block manager's prefix-cache totals (0 until it keeps them)."""
        scheduler, blocks = engine.scheduler, engine.block_manager
        self.running.set(len(scheduler.running))
        self.waiting.set(len(scheduler.waiting))
        usable = max(1, blocks.num_usable_blocks)
        self.kv_usage.set((usable - blocks.num_free_blocks) / usable)
        queries = getattr(blocks, "prefix_query_tokens", 0)
        hits = getattr(blocks, "prefix_hit_tokens", 0)
        self.prefix_queries.inc(max(0, queries - self._last_prefix_queries))
        self.prefix_hits.inc(max(0, hits - self._last_prefix_hits))
        self._last_prefix_queries, self._last_prefix_hits = queries, hits
        self.preemptions.inc(scheduler.num_preemptions - self._last_preemptions)
        self._last_preemptions = scheduler.num_preemptions

    def observe_output(self, progress: RequestProgress, seq: Sequence, output: RequestOutput) -> None:
        """Count what one step added to one request: tokens, latencies, speculation, and its end."""
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
        self._observe_speculation(progress, seq)
        if output.finished:
            self.finish(progress, output.finish_reason, seq.last_token_time)

    def finish(self, progress: RequestProgress, reason: str, end_time: float | None) -> None:
        self.success[reason if reason in self.success else "abort"].inc()
        if end_time is not None:
            self.e2e.observe(max(0.0, end_time - progress.arrival_time))

    def _observe_speculation(self, progress: RequestProgress, seq: Sequence) -> None:
        stats = seq.spec_stats
        self.drafts.inc(stats.target_forwards - progress.drafts)
        self.draft_tokens.inc(stats.drafted_tokens - progress.draft_tokens)
        self.accepted_tokens.inc(stats.accepted_tokens - progress.accepted_tokens)
        seen = progress.accepted_by_depth
        for position, count in enumerate(stats.accepted_by_depth):
            previous = seen[position] if position < len(seen) else 0
            if count > previous:
                self._accepted_at(position).inc(count - previous)
        progress.drafts, progress.draft_tokens = stats.target_forwards, stats.drafted_tokens
        progress.accepted_tokens = stats.accepted_tokens
        progress.accepted_by_depth = list(stats.accepted_by_depth)
