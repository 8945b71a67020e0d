"""What `kilotok bench latency` reports, on made-up measurements: the statistics, the agreement with
transformers, the ratios, the printed table and the JSON."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from kilotok.bench.baselines import PromptMeasurement
from kilotok.bench.latency_report import (
    AGREEMENT_TOKENS,
    KILOTOK_ENGINE,
    REFERENCE_ENGINE,
    LatencyReport,
    format_report,
    summarize,
    tokens_agree,
)

EOS = 2
MACHINE = {"cpu_model": "Test CPU", "cpu_flags": ["avx2"], "logical_cpus": 2, "torch_threads": 2,
           "torch_version": "0.0", "python_version": "3.11", "load_average_1m": 0.25}
SETTINGS = {"model": "m", "dtype": "auto", "num_prompts": 3, "max_tokens": 40, "spec": "none"}


def run(ttft_s: float, decode: float, prompt_tokens: int = 20, tokens: list[int] | None = None):
    return PromptMeasurement(prompt_tokens, ttft_s, decode, tokens if tokens is not None else list(range(40)))


def test_summarize_uses_medians_and_p10():
    runs = [run(0.1, 50.0, 10), run(0.3, 70.0, 60), run(0.2, 20.0, 30), run(0.5, 90.0, 50)]
    summary = summarize("x", runs)
    assert summary.num_prompts == 4
    assert summary.median_ttft_s == pytest.approx(0.25)
    assert summary.median_decode_tokens_per_s == pytest.approx(60.0)
    assert summary.p10_decode_tokens_per_s == pytest.approx(np.percentile([50, 70, 20, 90], 10))
    assert summary.median_prefill_tokens_per_s == pytest.approx(statistics.median([100, 200, 150, 100]))


def test_tokens_agree_checks_only_the_leading_window():
    reference = list(range(100, 200))
    assert tokens_agree(list(reference), reference, frozenset({EOS}))
    late_difference = reference[:AGREEMENT_TOKENS] + [0] * 10
    assert tokens_agree(late_difference, reference, frozenset({EOS}))
    early_difference = reference[:5] + [0] + reference[6:]
    assert not tokens_agree(early_difference, reference, frozenset({EOS}))


def test_tokens_agree_stops_at_the_candidates_eos():
    """The reference masks EOS to reach its fixed length, so only the part before EOS can be compared."""
    reference = list(range(100, 200))
    stopped = reference[:10] + [EOS] + [0] * 30
    assert tokens_agree(stopped, reference, frozenset({EOS}))
    assert not tokens_agree(stopped, reference, frozenset())


def make_report() -> LatencyReport:
    report = LatencyReport(dict(MACHINE), dict(SETTINGS))
    reference_tokens = list(range(100, 140))
    report.record(KILOTOK_ENGINE, "0.1.0", frozenset(), [
        run(0.05, 100.0, tokens=reference_tokens),
        run(0.05, 80.0, tokens=[0] + reference_tokens[1:]),
        run(0.05, 120.0, tokens=reference_tokens),
    ])
    report.record(REFERENCE_ENGINE, "5.0", frozenset({EOS}),
                  [run(0.2, 25.0, tokens=reference_tokens) for _ in range(3)])
    report.record("llama.cpp", "0.3", frozenset({EOS}), [run(0.1, 50.0, tokens=reference_tokens)] * 3)
    return report


def test_report_counts_agreement_against_transformers_only():
    agreement = {s.engine: s.prompts_agreeing_with_reference for s in make_report().summaries()}
    assert agreement == {KILOTOK_ENGINE: 2, REFERENCE_ENGINE: None, "llama.cpp": 3}


def test_ratios_read_as_kilotok_speed_over_baseline_speed():
    ratios = make_report().ratios()
    assert set(ratios) == {REFERENCE_ENGINE, "llama.cpp"}
    assert ratios[REFERENCE_ENGINE]["decode"] == pytest.approx(100.0 / 25.0)
    assert ratios[REFERENCE_ENGINE]["ttft"] == pytest.approx(0.2 / 0.05)
    assert ratios["llama.cpp"]["p10_decode"] == pytest.approx(np.percentile([100, 80, 120], 10) / 50.0)
    assert ratios["llama.cpp"]["prefill"] == pytest.approx((20 / 0.05) / (20 / 0.1))


def test_report_without_kilotok_has_no_ratios():
    report = LatencyReport(dict(MACHINE), dict(SETTINGS))
    report.record("llama.cpp", "0.3", frozenset(), [run(0.1, 50.0)])
    assert report.ratios() == {}
    assert "kilotok / baseline" not in format_report(report)


def test_printed_report_has_machine_one_row_per_engine_and_ratios():
    text = format_report(make_report())
    assert "Test CPU" in text and "torch 0.0" in text and "load average before the run 0.25" in text
    rows = {line.split("  ")[0].strip(): line for line in text.splitlines()}
    assert rows[KILOTOK_ENGINE].split()[-1] == "2/3"
    assert rows[KILOTOK_ENGINE].split()[2] == "100.0"
    assert "4.00x" in rows[REFERENCE_ENGINE] and "2.00x" in rows["llama.cpp"]


def test_json_report_round_trips_with_all_sections():
    data = json.loads(json.dumps(make_report().to_json()))
    assert set(data) == {"machine", "settings", "versions", "summaries", "ratios_kilotok_over_baseline",
                         "per_prompt"}
    assert [s["engine"] for s in data["summaries"]] == [KILOTOK_ENGINE, REFERENCE_ENGINE, "llama.cpp"]
    first = data["per_prompt"][KILOTOK_ENGINE][0]
    assert first["prefill_tokens_per_s"] == pytest.approx(400.0) and len(first["token_ids"]) == 40
