"""`kilotok bench latency`: single-user speed (TTFT, decode and prefill rates) at batch 1, greedy decoding.

Every engine gets the same prompt token ids (kilotok's chat template), a warmup run, then one timed run
per prompt. With --compare the baselines run in the same process on the same weights, because speeds
on these machines move from session to session and only a side-by-side run compares fairly.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kilotok.bench.baselines import EngineRunner, PromptMeasurement, TransformersRunner, baseline_factories
from kilotok.bench.prompts import BENCH_PROMPTS, bench_prompts
from kilotok.bench.report import log, machine_info, percentile, table_lines, write_json
from kilotok.engine.args import add_spec_args, spec_config
from kilotok.errors import InvalidRequestError
from kilotok.kernels.backend import BACKEND_CHOICES
from kilotok.speculative.config import SPEC_METHODS, SpecConfig

CLI_HELP = "time TTFT and decode speed at batch 1, optionally against transformers and llama.cpp"
KILOTOK_ENGINE = "kilotok"
REFERENCE_ENGINE = TransformersRunner.name
# The sanity column compares this many leading greedy tokens with transformers: enough to catch a wrong
# kernel, few enough that fp32-vs-quantized rounding rarely flips an argmax inside the window.
AGREEMENT_TOKENS = 32


@dataclass(frozen=True)
class LatencySettings:
    model: str = "smollm2-135m"
    dtype: str = "auto"
    backend: str = "auto"
    max_tokens: int = 128
    num_prompts: int = len(BENCH_PROMPTS)
    warmup: int = 1
    compare: bool = False
    spec: str = "none"
    spec_config: SpecConfig | None = None
    """The full speculative settings (tree shape, draft head); None: the method's defaults."""

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise InvalidRequestError(
                f"--max-tokens must be at least 2 to time decoding, got {self.max_tokens}"
            )
        if self.warmup < 0:
            raise InvalidRequestError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.spec not in SPEC_METHODS:
            raise InvalidRequestError(f"--spec must be one of {', '.join(SPEC_METHODS)}, got {self.spec!r}")
        bench_prompts(self.num_prompts)


class KilotokRunner:
    """kilotok's LLM behind the same interface as the baselines."""

    def __init__(self, settings: LatencySettings) -> None:
        import kilotok
        from kilotok import LLM, SamplingParams

        # The name stays plain whatever --spec is: the report's header names the method, ratios key on it.
        self.name = KILOTOK_ENGINE
        self.version = kilotok.__version__
        # The reference's EOS ids decide where the agreement check stops; kilotok adds none of its own.
        self.stop_token_ids: frozenset[int] = frozenset()
        self._sampling_params = SamplingParams
        spec = settings.spec_config or settings.spec
        spec_options = {} if spec == "none" else {"spec": spec}
        self.llm = LLM(settings.model, dtype=settings.dtype, backend=settings.backend, progress=False,
                       **spec_options)
        self.acceptance_lengths: list[float] = []
        """One per measured run, warmup included (1.0 without speculation)."""

    def measure(self, prompt_token_ids: list[int], max_tokens: int) -> PromptMeasurement:
        params = self._sampling_params(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        output = self.llm.generate([{"prompt_token_ids": prompt_token_ids}], params)[0]
        self.acceptance_lengths.append(output.acceptance_length)
        return PromptMeasurement(
            num_prompt_tokens=output.num_prompt_tokens,
            ttft_s=output.ttft_s,
            decode_tokens_per_s=output.decode_tokens_per_s,
            token_ids=list(output.token_ids),
        )


def time_engine(
    runner: EngineRunner, prompt_ids: list[list[int]], max_tokens: int, warmup: int
) -> list[PromptMeasurement]:
    """Warm up on the first prompt (compilation, allocator, caches), then time each prompt once."""
    for _ in range(warmup):
        runner.measure(prompt_ids[0], max_tokens)
    runs = []
    for index, ids in enumerate(prompt_ids, start=1):
        run = runner.measure(ids, max_tokens)
        log(f"  {runner.name}: prompt {index}/{len(prompt_ids)} ({run.num_prompt_tokens} tokens): "
            f"TTFT {run.ttft_s * 1000:.1f} ms, decode {run.decode_tokens_per_s:.1f} tok/s")
        runs.append(run)
    return runs


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


def run_latency(settings: LatencySettings) -> LatencyReport:
    conversations = bench_prompts(settings.num_prompts)
    # Taken first, so the load average is other processes', not this run's own model loading.
    machine = machine_info()
    log(f"loading kilotok ({settings.model}, {settings.dtype})")
    kilotok_runner = KilotokRunner(settings)
    prompt_ids = [kilotok_runner.llm.tokenizer.encode_chat(messages) for messages in conversations]
    report = LatencyReport(machine, asdict(settings))
    _time_into_report(report, kilotok_runner, prompt_ids, settings)
    timed = kilotok_runner.acceptance_lengths[settings.warmup:]
    # Tokens per target forward beside tokens/s: the settings record carries it into the JSON and header.
    report.settings["acceptance_lengths"] = timed
    report.settings["median_acceptance_length"] = statistics.median(timed)
    # One engine in memory at a time, so no engine's timing pays for another's resident weights.
    del kilotok_runner
    if settings.compare:
        context_tokens = max(map(len, prompt_ids)) + settings.max_tokens + 16
        for make_runner in baseline_factories(settings.model, context_tokens):
            _time_into_report(report, make_runner(), prompt_ids, settings)
    return report


def _time_into_report(
    report: LatencyReport, runner: EngineRunner, prompt_ids: list[list[int]], settings: LatencySettings
) -> None:
    log(f"timing {runner.name}")
    runs = time_engine(runner, prompt_ids, settings.max_tokens, settings.warmup)
    report.record(runner.name, runner.version, runner.stop_token_ids, runs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = LatencySettings()
    parser.add_argument("--model", default=defaults.model, help="model name, GGUF file or HF folder")
    parser.add_argument("--dtype", default=defaults.dtype, help="kilotok compute dtype (default: auto)")
    parser.add_argument("--backend", default=defaults.backend, choices=BACKEND_CHOICES,
                        help="kernel implementations, as for generate (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="tokens generated per prompt, EOS ignored (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=defaults.num_prompts,
                        help=f"how many of the {len(BENCH_PROMPTS)} fixed prompts to run (default: all)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="untimed runs per engine before timing (default: %(default)s)")
    parser.add_argument("--compare", action="store_true",
                        help="also time transformers eager fp32 and, when installed, llama.cpp")
    add_spec_args(parser)
    parser.add_argument("--json-out", type=Path, help="also write the full results to this JSON file")


def run_from_args(args: argparse.Namespace) -> int:
    settings = LatencySettings(
        model=args.model, dtype=args.dtype, backend=args.backend, max_tokens=args.max_tokens,
        num_prompts=args.num_prompts,
        warmup=args.warmup, compare=args.compare, spec=args.spec,
        spec_config=spec_config(args) if args.spec != "none" else None,
    )
    report = run_latency(settings)
    print(format_report(report))
    print(f"kilotok acceptance length (tokens per target forward, median over prompts): "
          f"{report.settings['median_acceptance_length']:.2f}")
    if args.json_out is not None:
        write_json(args.json_out, report.to_json())
        log(f"wrote {args.json_out}")
    return 0
