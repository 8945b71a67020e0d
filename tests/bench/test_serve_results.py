"""`bench serve`'s results on hand-made numbers checked against numpy: the per-request and per-level
statistics, its results file (schema, append), table and frontier plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from kilotok.bench.serve_results import (
    SCHEMA,
    ConfigurationResult,
    LevelSummary,
    RequestTiming,
    format_table,
    frontier_figure,
    merge_configuration,
    read_results,
    summarize_level,
    write_frontier_plot,
    write_results,
)
from kilotok.errors import InvalidRequestError

# sent, first token, last token, output tokens: made-up but shaped like a busy server's requests.
RAW = np.array([
    [0.00, 0.30, 2.30, 41],
    [0.05, 0.90, 3.10, 64],
    [0.10, 0.45, 1.95, 20],
    [1.20, 1.70, 4.70, 97],
    [2.00, 2.10, 2.90, 9],
    [2.40, 3.30, 6.10, 128],
    [3.00, 3.05, 5.55, 77],
])


def timings() -> list[RequestTiming]:
    return [RequestTiming(sent, last + 0.01, first, last, int(tokens)) for sent, first, last, tokens in RAW]


def test_per_user_rate_is_tokens_after_the_first_over_their_streaming_time():
    expected = (RAW[:, 3] - 1) / (RAW[:, 2] - RAW[:, 1])
    assert [t.tokens_per_s_per_user for t in timings()] == pytest.approx(expected)


def test_ttft_is_first_token_minus_send():
    assert [t.ttft_s for t in timings()] == pytest.approx(RAW[:, 1] - RAW[:, 0])


def test_level_statistics_match_numpy():
    level = summarize_level(4, timings(), wall_s=6.5, acceptance_length=1.0)
    rates = (RAW[:, 3] - 1) / (RAW[:, 2] - RAW[:, 1])
    ttfts = RAW[:, 1] - RAW[:, 0]
    assert level.median_tokens_per_s_per_user == pytest.approx(np.median(rates))
    assert level.p10_tokens_per_s_per_user == pytest.approx(np.percentile(rates, 10))
    assert level.median_ttft_s == pytest.approx(np.median(ttfts))
    assert level.p99_ttft_s == pytest.approx(np.percentile(ttfts, 99))
    assert level.output_tokens == RAW[:, 3].sum()
    assert level.total_output_tokens_per_s == pytest.approx(RAW[:, 3].sum() / 6.5)
    assert (level.concurrency, level.num_requests, level.num_failed) == (4, 7, 0)


def test_undefined_rates_and_failures_stay_out_of_the_statistics():
    single_token = RequestTiming(0.0, 0.6, 0.5, 0.5, 1)
    one_chunk = RequestTiming(0.0, 0.6, 0.5, 0.5, 12)
    failed = RequestTiming(0.0, 0.2, error="APIConnectionError: refused")
    good = timings()[:3]
    level = summarize_level(2, [single_token, one_chunk, failed, *good], wall_s=4.0, acceptance_length=None)
    rates = [t.tokens_per_s_per_user for t in good]
    ttfts = [0.5, 0.5, *[t.ttft_s for t in good]]
    assert single_token.tokens_per_s_per_user is None and one_chunk.tokens_per_s_per_user is None
    assert level.median_tokens_per_s_per_user == pytest.approx(np.median(rates))
    assert level.median_ttft_s == pytest.approx(np.median(ttfts))
    assert (level.num_requests, level.num_failed) == (6, 1)
    assert level.output_tokens == 1 + 12 + RAW[:3, 3].sum()


def test_a_level_where_everything_failed_has_no_figures():
    failed = [RequestTiming(0.0, 0.1, error="boom")] * 3
    level = summarize_level(1, failed, wall_s=0.1, acceptance_length=None)
    assert level.median_tokens_per_s_per_user is None and level.p99_ttft_s is None
    assert level.total_output_tokens_per_s == 0 and level.num_failed == 3


def test_wall_time_must_be_positive():
    with pytest.raises(ValueError):
        summarize_level(1, timings(), wall_s=0.0, acceptance_length=1.0)


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
