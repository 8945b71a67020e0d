"""`kilotok bench latency`: the statistics, the report's shape and the CLI, on made-up measurements.

Nothing here times anything: speed depends on the machine, so speed is never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

import kilotok
from kilotok.bench import latency
from kilotok.bench.baselines import PromptMeasurement
from kilotok.bench.latency import (
    AGREEMENT_TOKENS,
    KILOTOK_ENGINE,
    REFERENCE_ENGINE,
    LatencyReport,
    format_report,
    summarize,
    tokens_agree,
)
from kilotok.cli import bench as bench_cli
from kilotok.errors import InvalidRequestError
from kilotok.speculative.config import SPEC_METHODS, SpecConfig

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


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kilotok")
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_parses_latency_options():
    args = parse(["bench", "latency", "--model", "x.gguf", "--max-tokens", "64", "--num-prompts", "2",
                  "--warmup", "0", "--compare", "--json-out", "out/r.json", "--spec", "none"])
    assert (args.model, args.max_tokens, args.num_prompts, args.warmup) == ("x.gguf", 64, 2, 0)
    assert args.compare and args.json_out == Path("out/r.json") and args.run is latency.run_from_args
    defaults = parse(["bench", "latency"])
    assert (defaults.max_tokens, defaults.warmup, defaults.compare, defaults.spec) == (128, 1, False, "none")


@pytest.mark.parametrize("argv", [["bench"], ["bench", "latency", "--spec", "medusa"]])
def test_cli_rejects_missing_kind_and_unknown_spec(argv):
    with pytest.raises(SystemExit):
        parse(argv)


@pytest.mark.parametrize("bad", [{"max_tokens": 1}, {"warmup": -1}, {"num_prompts": 0}, {"spec": "x"}])
def test_settings_reject_bad_values(bad):
    with pytest.raises(InvalidRequestError):
        latency.LatencySettings(**bad)


@pytest.mark.parametrize("method", SPEC_METHODS)
def test_kilotok_runner_asks_the_llm_for_the_chosen_speculation(monkeypatch, method):
    options = []
    monkeypatch.setattr(kilotok, "LLM", lambda model, **kwargs: options.append(kwargs))
    latency.KilotokRunner(latency.LatencySettings(spec=method))
    assert options == [{"dtype": "auto", "backend": "auto", "progress": False,
                        **({} if method == "none" else {"spec": method})}]
    config = SpecConfig(method="ngram", depth=5)
    latency.KilotokRunner(latency.LatencySettings(spec="ngram", spec_config=config))
    assert options[-1]["spec"] is config


class FakeRunner:
    name, version, stop_token_ids = KILOTOK_ENGINE, "test", frozenset()

    def __init__(self, settings=None):
        self.calls: list[list[int]] = []
        self.acceptance_lengths: list[float] = []
        self.llm = argparse.Namespace(tokenizer=argparse.Namespace(encode_chat=lambda m: [len(m)] * 4))

    def measure(self, prompt_token_ids, max_tokens):
        self.calls.append(prompt_token_ids)
        self.acceptance_lengths.append(1.0 + len(self.calls))
        return run(0.1, 10.0 * len(self.calls), len(prompt_token_ids), [1] * max_tokens)


def test_time_engine_warms_up_on_the_first_prompt_then_times_each_once():
    runner = FakeRunner()
    runs = latency.time_engine(runner, [[1], [2, 2], [3, 3, 3]], max_tokens=5, warmup=2)
    assert runner.calls == [[1], [1], [1], [2, 2], [3, 3, 3]]
    assert [r.decode_tokens_per_s for r in runs] == [30.0, 40.0, 50.0]


def test_cli_run_writes_report_and_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(latency, "KilotokRunner", FakeRunner)
    out = tmp_path / "sub" / "latency.json"
    args = parse(["bench", "latency", "--num-prompts", "3", "--max-tokens", "8", "--json-out", str(out)])
    assert args.run(args) == 0
    assert KILOTOK_ENGINE in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["settings"]["num_prompts"] == 3 and len(data["per_prompt"][KILOTOK_ENGINE]) == 3
    # The warmup run's acceptance length is left out; the median of the timed runs (3, 4, 5) is reported.
    assert data["settings"]["acceptance_lengths"] == [3.0, 4.0, 5.0]
    assert data["settings"]["median_acceptance_length"] == 4.0
    assert data["machine"]["torch_threads"] >= 1 and data["machine"]["cpu_model"]

