"""`kilotok bench serve` output: the JSON file (schema, append), the frontier plot and the table."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from kilotok.bench.serve_plot import frontier_figure, write_frontier_plot
from kilotok.bench.serve_report import (
    SCHEMA,
    ConfigurationResult,
    format_table,
    merge_configuration,
    read_results,
    write_results,
)
from kilotok.bench.serve_stats import LevelSummary
from kilotok.errors import InvalidRequestError

MACHINE = {"cpu_model": "Test CPU", "logical_cpus": 2}
LEVEL_KEYS = {
    "concurrency", "num_requests", "num_failed", "output_tokens", "wall_s", "median_tokens_per_s_per_user",
    "p10_tokens_per_s_per_user", "median_ttft_s", "p99_ttft_s", "total_output_tokens_per_s", "acceptance_length",
}


def level(concurrency: int, per_user: float | None, total: float, acceptance: float | None = 1.0) -> LevelSummary:
    return LevelSummary(concurrency, 8, 0, int(total * 10), 10.0, per_user, per_user and per_user * 0.8,
                        0.2 * concurrency, 0.3 * concurrency, total, acceptance)


def configuration(label: str, spec: str, points: list[tuple[int, float | None, float]]) -> ConfigurationResult:
    return ConfigurationResult(label, ["kilotok", "bench", "serve", "--spec", spec], MACHINE,
                               {"spec": spec, "max_tokens": 64}, [level(*point) for point in points])


PLAIN = configuration("plain", "none", [(1, 60.0, 60.0), (2, 50.0, 100.0), (4, 35.0, 140.0)])
EAGLE = configuration("eagle3", "eagle3", [(1, 90.0, 90.0), (2, 70.0, 140.0), (4, None, 150.0)])


def test_json_has_the_documented_schema(tmp_path: Path):
    path = tmp_path / "out" / "results.json"
    write_results(path, [PLAIN])
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA
    (record,) = document["configurations"]
    assert set(record) == {"label", "command_line", "machine", "config", "levels"}
    assert record["machine"] == MACHINE and record["config"]["spec"] == "none"
    assert [set(entry) for entry in record["levels"]] == [LEVEL_KEYS] * 3
    assert [entry["median_tokens_per_s_per_user"] for entry in record["levels"]] == [60.0, 50.0, 35.0]


def test_append_round_trips_and_a_rerun_replaces_its_label(tmp_path: Path):
    path = tmp_path / "results.json"
    write_results(path, [PLAIN])
    configurations = merge_configuration(read_results(path), EAGLE)
    write_results(path, configurations)
    assert read_results(path) == [PLAIN, EAGLE]
    rerun = configuration("plain", "none", [(1, 61.0, 61.0)])
    assert merge_configuration(read_results(path), rerun) == [rerun, EAGLE]


def test_appending_to_a_foreign_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"engines": []}))
    with pytest.raises(InvalidRequestError, match="not a `kilotok bench serve` results file"):
        read_results(path)


def test_two_configurations_are_two_curves_on_one_plot(tmp_path: Path):
    figure = frontier_figure([PLAIN, EAGLE])
    (axes,) = figure.axes
    assert [line.get_label() for line in axes.lines] == ["plain", "eagle3"]
    plain_line, eagle_line = axes.lines
    assert list(plain_line.get_xdata()) == [60.0, 100.0, 140.0]
    assert list(plain_line.get_ydata()) == [60.0, 50.0, 35.0]
    # A level without a per-user figure is left off rather than drawn at zero.
    assert list(eagle_line.get_xdata()) == [90.0, 140.0]
    assert sorted(text.get_text() for text in axes.texts) == ["c=1", "c=1", "c=2", "c=2", "c=4"]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["plain", "eagle3"]


def test_plot_file_is_a_png(tmp_path: Path):
    path = tmp_path / "plots" / "frontier.png"
    write_frontier_plot(path, [PLAIN, EAGLE])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 400 and height > 300


def test_table_lists_every_level_and_marks_missing_figures():
    table = format_table(EAGLE)
    lines = table.splitlines()
    assert lines[0] == "kilotok bench serve: eagle3"
    assert len(lines) == 2 + len(EAGLE.levels)
    assert lines[-1].split()[:5] == ["4", "8", "0", "-", "-"]
