"""`kilotok bench latency`: single-user speed (TTFT, decode and prefill rates) at batch 1, greedy decoding.

Every engine gets the same prompt token ids (kilotok's chat template), a warmup run, then one timed run
per prompt. With --compare the baselines run in the same process on the same weights, because speeds
on these machines move from session to session and only a side-by-side run compares fairly.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from kilotok.bench.baselines import EngineRunner, PromptMeasurement, baseline_factories
from kilotok.bench.latency_report import KILOTOK_ENGINE, LatencyReport, format_report
from kilotok.bench.prompts import BENCH_PROMPTS, bench_prompts
from kilotok.bench.report import log, machine_info, write_json
from kilotok.engine.args import add_spec_args, spec_config
from kilotok.errors import InvalidRequestError
from kilotok.kernels.backend import BACKEND_CHOICES
from kilotok.speculative.config import SPEC_METHODS, SpecConfig

CLI_HELP = "time TTFT and decode speed at batch 1, optionally against transformers and llama.cpp"


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
