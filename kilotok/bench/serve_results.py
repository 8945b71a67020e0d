"""`kilotok bench serve`'s results: each request's timing as the client saw it, the summary of a
concurrency level, the results file that runs append to, and the latency-throughput frontier plot.

Everything here works on finished measurements, so it is tested with hand-made numbers, no model and no
server. matplotlib is imported only to draw: every kilotok command imports this module to build its parser.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from kilotok.bench.report import percentile, table_lines, write_json
from kilotok.errors import InvalidRequestError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCHEMA = "kilotok-bench-serve/1"


@dataclass(frozen=True)
class RequestTiming:
    """One streamed request, with perf_counter times in seconds as the client saw them."""

    sent_s: float
    done_s: float
    first_token_s: float | None = None
    last_token_s: float | None = None
    output_tokens: int = 0
    # Why the request failed (HTTP error, dropped connection, no usage), or None when it completed.
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def tokens_per_s_per_user(self) -> float | None:
        """The rate one user watches the answer stream at: tokens after the first over the time they took.

        None when it is undefined: fewer than two tokens, or all of them in one chunk.
        """
        if self.first_token_s is None or self.last_token_s is None or self.output_tokens < 2:
            return None
        streaming_s = self.last_token_s - self.first_token_s
        if streaming_s <= 0:
            return None
        return (self.output_tokens - 1) / streaming_s


@dataclass(frozen=True)
class LevelSummary:
    """What one concurrency level of `kilotok bench serve` measured. Figures without a single sample are None."""

    concurrency: int
    num_requests: int
    num_failed: int
    output_tokens: int
    wall_s: float
    median_tokens_per_s_per_user: float | None
    p10_tokens_per_s_per_user: float | None
    median_ttft_s: float | None
    p99_ttft_s: float | None
    total_output_tokens_per_s: float
    # Tokens emitted per target decode forward over the level (1.0 without speculation), None if unknown.
    acceptance_length: float | None


def summarize_level(
    concurrency: int, timings: list[RequestTiming], wall_s: float, acceptance_length: float | None
) -> LevelSummary:
    """Per-user and TTFT statistics over completed requests; total throughput over the level's wall time
    (failed requests stay in the count of failures and out of every statistic)."""
    if wall_s <= 0:
        raise ValueError(f"a level's wall time must be positive, got {wall_s}")
    completed = [timing for timing in timings if timing.error is None]
    rates = [rate for timing in completed if (rate := timing.tokens_per_s_per_user) is not None]
    ttfts = [ttft for timing in completed if (ttft := timing.ttft_s) is not None]
    output_tokens = sum(timing.output_tokens for timing in completed)
    return LevelSummary(
        concurrency=concurrency,
        num_requests=len(timings),
        num_failed=len(timings) - len(completed),
        output_tokens=output_tokens,
        wall_s=wall_s,
        median_tokens_per_s_per_user=statistics.median(rates) if rates else None,
        p10_tokens_per_s_per_user=percentile(rates, 10) if rates else None,
        median_ttft_s=statistics.median(ttfts) if ttfts else None,
        p99_ttft_s=percentile(ttfts, 99) if ttfts else None,
        total_output_tokens_per_s=output_tokens / wall_s,
        acceptance_length=acceptance_length,
    )


LEVEL_FIELDS = tuple(item.name for item in fields(LevelSummary))


@dataclass
class ConfigurationResult:
    """One `kilotok bench serve` configuration's run: its label (the plot's legend entry), the machine,
    command line and settings it ran with, and what each level measured. One results file holds several
    (say, with and without speculation), so they can be drawn on one chart."""

    label: str
    command_line: list[str]
    machine: dict[str, object]
    config: dict[str, object]
    levels: list[LevelSummary] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "command_line": self.command_line, "machine": self.machine,
                "config": self.config, "levels": [asdict(level) for level in self.levels]}

    @classmethod
    def from_json(cls, record: dict, where: str) -> ConfigurationResult:
        try:
            levels = [LevelSummary(**{name: level[name] for name in LEVEL_FIELDS}) for level in record["levels"]]
            return cls(record["label"], list(record["command_line"]), dict(record["machine"]),
                       dict(record["config"]), levels)
        except (KeyError, TypeError) as error:
            raise InvalidRequestError(f"{where}: a configuration is malformed ({error!r})") from None


def read_results(path: Path) -> list[ConfigurationResult]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidRequestError(f"cannot read {path} to append to it: {error}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise InvalidRequestError(
            f"{path} is not a `kilotok bench serve` results file (schema {SCHEMA}); "
            "choose another --out or drop --append to overwrite it"
        )
    return [ConfigurationResult.from_json(record, str(path)) for record in document["configurations"]]


def merge_configuration(
    existing: list[ConfigurationResult], new: ConfigurationResult
) -> list[ConfigurationResult]:
    """Add a configuration; a rerun under the same label replaces the earlier one, in its place."""
    labels = [configuration.label for configuration in existing]
    if new.label in labels:
        return [new if configuration.label == new.label else configuration for configuration in existing]
    return [*existing, new]


def write_results(path: Path, configurations: list[ConfigurationResult]) -> None:
    write_json(path, {"schema": SCHEMA, "configurations": [result.to_json() for result in configurations]})


def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def format_table(result: ConfigurationResult) -> str:
    header = ("conc", "requests", "failed", "tok/s/user med", "p10", "TTFT med ms", "p99 ms",
              "total tok/s", "accept len")
    rows = [header]
    for level in result.levels:
        rows.append((
            str(level.concurrency), str(level.num_requests), str(level.num_failed),
            _cell(level.median_tokens_per_s_per_user), _cell(level.p10_tokens_per_s_per_user),
            _cell(level.median_ttft_s, 1000), _cell(level.p99_ttft_s, 1000),
            _cell(level.total_output_tokens_per_s), _cell(level.acceptance_length, digits=2),
        ))
    return "\n".join([f"kilotok bench serve: {result.label}", *table_lines(rows)])


def frontier_points(result: ConfigurationResult) -> list[tuple[int, float, float]]:
    """(concurrency, total tok/s, median tok/s per user) for each level that has both figures."""
    return [
        (level.concurrency, level.total_output_tokens_per_s, level.median_tokens_per_s_per_user)
        for level in result.levels
        if level.median_tokens_per_s_per_user is not None and level.total_output_tokens_per_s > 0
    ]


def frontier_figure(configurations: list[ConfigurationResult]) -> Figure:
    """The latency-throughput frontier: tokens/s per user (how fast one answer streams) against total
    output tokens/s (how much the server delivers), one curve per configuration, points labelled by
    concurrency. A curve above and to the right of another is better at every load.

    Drawn on the Agg canvas directly, without pyplot, so no global backend is switched and no display needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for configuration in configurations:
        points = frontier_points(configuration)
        if not points:
            continue
        concurrencies, totals, per_user = zip(*points, strict=True)
        (line,) = axes.plot(totals, per_user, marker="o", label=configuration.label)
        for concurrency, x, y in points:
            axes.annotate(f"c={concurrency}", (x, y), textcoords="offset points", xytext=(4, 4),
                          fontsize=8, color=line.get_color())
    axes.set_xlabel("total output tokens/s")
    axes.set_ylabel("output tokens/s per user (median)")
    axes.set_title("kilotok serve: latency-throughput frontier")
    # Room above and right of the outermost points for their concurrency labels.
    axes.margins(0.12)
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    if axes.lines:
        axes.legend()
    figure.tight_layout()
    return figure


def write_frontier_plot(path: Path, configurations: list[ConfigurationResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frontier_figure(configurations).savefig(path, format="png")
