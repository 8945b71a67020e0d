"""`kilotok bench latency`: its settings, its CLI and how it drives the engines, on made-up measurements
(the report itself: test_latency_report.py).

Nothing here times anything: speed depends on the machine, so speed is never asserted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import kilotok
from kilotok.bench import latency
from kilotok.bench.baselines import PromptMeasurement
from kilotok.bench.latency_report import KILOTOK_ENGINE
from kilotok.cli import bench as bench_cli
from kilotok.errors import InvalidRequestError
from kilotok.speculative.config import SPEC_METHODS, SpecConfig


def run(ttft_s: float, decode: float, prompt_tokens: int = 20, tokens: list[int] | None = None):
    return PromptMeasurement(prompt_tokens, ttft_s, decode, tokens if tokens is not None else list(range(40)))


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

