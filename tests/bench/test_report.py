"""What every benchmark shares, on hand-made numbers checked against numpy: percentiles, tables and the
machine record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kilotok.bench.report import machine_info, percentile, table_lines


@pytest.mark.parametrize("percent", [0, 10, 37.5, 50, 90, 100])
@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [9.0, 2.0, 7.0, 4.0, 4.0, 11.0, 0.5]])
def test_percentile_matches_numpy(values, percent):
    assert percentile(values, percent) == pytest.approx(np.percentile(values, percent))


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 10)


def test_table_aligns_names_left_and_numbers_right():
    rows = [("engine", "tok/s"), ("kilotok", "9.5"), ("x", "100.0")]
    assert table_lines(rows, left_aligned=1) == ["engine   tok/s", "kilotok    9.5", "x        100.0"]
    assert table_lines(rows) == [" engine  tok/s", "kilotok    9.5", "      x  100.0"]


def test_machine_record_is_json_ready():
    machine = json.loads(json.dumps(machine_info()))
    assert machine["cpu_model"] and machine["torch_threads"] >= 1 and isinstance(machine["cpu_flags"], list)
    assert {"logical_cpus", "torch_version", "python_version", "date_utc", "load_average_1m"} <= set(machine)
