"""The latency-throughput frontier: tokens/s per user (how fast one answer streams) against total output
tokens/s (how much the server delivers), one curve per configuration, points labelled by concurrency.

A configuration whose curve lies above and to the right of another's is better at every load. The figure
is drawn on the Agg canvas directly, without pyplot, so no global backend is switched and no display needed.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kilotok.bench.serve_report import ConfigurationResult


def frontier_points(result: ConfigurationResult) -> list[tuple[int, float, float]]:
    """(concurrency, total tok/s, median tok/s per user) for each level that has both figures."""
    return [
        (level.concurrency, level.total_output_tokens_per_s, level.median_tokens_per_s_per_user)
        for level in result.levels
        if level.median_tokens_per_s_per_user is not None and level.total_output_tokens_per_s > 0
    ]


def frontier_figure(configurations: list[ConfigurationResult]) -> Figure:
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
