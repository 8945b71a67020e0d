"""What `kilotok bench latency` reports: each engine's medians over the prompts, kilotok's ratios over
each baseline, whether its leading greedy tokens agree with transformers', the printed table and the JSON.

Everything here works on finished measurements, so it is tested with hand-made numbers, no model.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from kilotok.bench.baselines import PromptMeasurement, TransformersRunner
from kilotok.bench.report import percentile, table_lines

KILOTOK_ENGINE = "kilotok"
REFERENCE_ENGINE = TransformersRunner.name
# The sanity column compares this many leading greedy tokens with transformers: enough to catch a wrong
# kernel, few enough that fp32-vs-quantized rounding rarely flips an argmax inside the window.
AGREEMENT_TOKENS = 32


def tokens_agree(candidate: list[int], reference: list[int], stop_token_ids: frozenset[int]) -> bool:
    """Whether the first AGREEMENT_TOKENS tokens match, up to the candidate's first stop token: the
    reference masks EOS to reach its fixed length, so past an EOS the two legitimately differ."""
    window = candidate[:AGREEMENT_TOKENS]
    stop_at = next((i for i, token in enumerate(window) if token in stop_token_ids), len(window))
    return window[:stop_at] == reference[:stop_at]


@dataclass(frozen=True)
class EngineSummary:
    engine: str
    num_prompts: int
    median_ttft_s: float
    median_decode_tokens_per_s: float
    p10_decode_tokens_per_s: float
    median_prefill_tokens_per_s: float
    # Prompts whose leading greedy tokens equal transformers', or None for transformers itself / no reference.
    prompts_agreeing_with_reference: int | None = None


def summarize(
    engine: str, measurements: list[PromptMeasurement], agreeing: int | None = None
) -> EngineSummary:
    decode_rates = [m.decode_tokens_per_s for m in measurements]
    return EngineSummary(
        engine=engine,
        num_prompts=len(measurements),
        median_ttft_s=statistics.median(m.ttft_s for m in measurements),
        median_decode_tokens_per_s=statistics.median(decode_rates),
        p10_decode_tokens_per_s=percentile(decode_rates, 10),
        median_prefill_tokens_per_s=statistics.median(m.prefill_tokens_per_s for m in measurements),
        prompts_agreeing_with_reference=agreeing,
    )


@dataclass
class LatencyReport:
    """What one bench run measured, per engine in run order, plus what it ran on and with."""

    machine: dict[str, object]
    settings: dict[str, object]
    versions: dict[str, str] = field(default_factory=dict)
    measurements: dict[str, list[PromptMeasurement]] = field(default_factory=dict)
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)

    def record(
        self, engine: str, version: str, stop_token_ids: frozenset[int], runs: list[PromptMeasurement]
    ) -> None:
        self.versions[engine] = version
        self.stop_token_ids |= stop_token_ids
        self.measurements[engine] = runs

    def summaries(self) -> list[EngineSummary]:
        reference = self.measurements.get(REFERENCE_ENGINE)
        return [
            summarize(engine, runs, None if reference is None or engine == REFERENCE_ENGINE
                      else self._count_agreeing(runs, reference))
            for engine, runs in self.measurements.items()
        ]

    def _count_agreeing(self, runs: list[PromptMeasurement], reference: list[PromptMeasurement]) -> int:
        return sum(
            tokens_agree(run.token_ids, ref.token_ids, self.stop_token_ids)
            for run, ref in zip(runs, reference, strict=True)
        )

    def ratios(self) -> dict[str, dict[str, float]]:
        """kilotok's speed over each baseline's (>1: kilotok faster). TTFT is a time, so its ratio is
        baseline TTFT over kilotok TTFT, to read the same way as the rates."""
        by_engine = {summary.engine: summary for summary in self.summaries()}
        ours = by_engine.get(KILOTOK_ENGINE)
        if ours is None:
            return {}
        return {
            name: {
                "ttft": theirs.median_ttft_s / ours.median_ttft_s,
                "decode": ours.median_decode_tokens_per_s / theirs.median_decode_tokens_per_s,
                "p10_decode": ours.p10_decode_tokens_per_s / theirs.p10_decode_tokens_per_s,
                "prefill": ours.median_prefill_tokens_per_s / theirs.median_prefill_tokens_per_s,
            }
            for name, theirs in by_engine.items()
            if name != KILOTOK_ENGINE
        }

    def to_json(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "versions": self.versions,
            "summaries": [asdict(summary) for summary in self.summaries()],
            "ratios_kilotok_over_baseline": self.ratios(),
            "per_prompt": {
                engine: [asdict(run) | {"prefill_tokens_per_s": run.prefill_tokens_per_s} for run in runs]
                for engine, runs in self.measurements.items()
            },
        }


_SUMMARY_HEADER = ("engine", "TTFT ms", "decode tok/s", "p10 decode", "prefill tok/s", "greedy=HF[:32]")
_RATIO_HEADER = ("kilotok / baseline", "TTFT", "decode", "p10 decode", "prefill")


def _summary_row(summary: EngineSummary) -> tuple[str, ...]:
    agreeing = summary.prompts_agreeing_with_reference
    return (
        summary.engine,
        f"{summary.median_ttft_s * 1000:.1f}",
        f"{summary.median_decode_tokens_per_s:.1f}",
        f"{summary.p10_decode_tokens_per_s:.1f}",
        f"{summary.median_prefill_tokens_per_s:.0f}",
        "-" if agreeing is None else f"{agreeing}/{summary.num_prompts}",
    )


def format_report(report: LatencyReport) -> str:
    machine, settings = report.machine, report.settings
    lines = [
        f"kilotok bench latency: model {settings['model']} ({settings['dtype']}, "
        f"speculative decoding: {settings['spec']}), "
        f"{settings['num_prompts']} prompts, {settings['max_tokens']} tokens each, "
        "batch 1, greedy, EOS ignored",
        f"machine: {machine['cpu_model']} [{' '.join(machine['cpu_flags'])}], "
        f"{machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch_version']}, python {machine['python_version']}, "
        f"load average before the run {machine['load_average_1m']}",
        "versions: " + ", ".join(f"{name} {version}" for name, version in report.versions.items()),
        "",
        *table_lines([_SUMMARY_HEADER, *map(_summary_row, report.summaries())], left_aligned=1),
        "(medians over prompts; decode tok/s is per user and excludes the first token)",
    ]
    ratios = report.ratios()
    if ratios:
        rows = [(name, *(f"{value:.2f}x" for value in ratio.values())) for name, ratio in ratios.items()]
        lines += ["", *table_lines([_RATIO_HEADER, *rows], left_aligned=1), "(>1 means kilotok is faster)"]
    return "\n".join(lines)
