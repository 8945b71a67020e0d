"""`kilotok bench gpu`: the end-to-end GPU benchmark, every case in one run on one card, after measuring the
card's copy bandwidth (a large device-to-device copy):

- smollm2: the default model at batch 1, greedy, over the bench prompts (bench/prompts.py): kilotok without
  speculation, with n-gram and with EAGLE-3 (the shipped head), in bf16 and fp8-block; transformers on the
  same weights (dequantized to bf16), eager and with its static cache (which it compiles on a GPU).
- dense: a Llama-3.1-8B-shaped model with random weights (models/random_weights.py), bf16 and fp8-block, at
  several batch sizes: tokens/s per user and in total; at batch 1 without speculation, the share of the
  copy bandwidth reached (weight bytes per token over the step time).
- moe: a Llama 4 Maverick-shaped model with FP8 experts, cut to as many layers as fit, and to half as many:
  tokens/s per user at batch 1, and the cost of a dense+MoE layer pair from the difference of the two.

Every case runs under one time budget (a case that would start after it is recorded as skipped), and the
JSON is rewritten after every case, so a run stopped at the end of a GPU lease keeps what it measured.
`--tiny` runs the same cases on small random models with few tokens: the dry run for a CPU (tests do this).
Figures are only comparable within one run; see docs/benchmarks.md for the command a GPU session runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from kilotok.bench import gpu_cases as cases
from kilotok.bench.prompts import bench_prompts
from kilotok.bench.report import log, table_lines, write_json
from kilotok.errors import InvalidRequestError
from kilotok.models.random_weights import random_model_config

CLI_HELP = "end-to-end speed on a GPU: the default model against transformers, 8B- and Maverick-shaped models"
SECTIONS = ("smollm2", "dense", "moe")
SPECS = ("none", "ngram", "eagle3")
GiB = 2**30
BLOCK_SIZE = 16


@dataclass(frozen=True)
class GpuE2eSettings:
    sections: tuple[str, ...] = SECTIONS
    device: str = "auto"
    budget_s: float = 420.0
    smollm_model: str = "smollm2-135m"
    smollm_dtypes: tuple[str, ...] = ("bf16", "fp8-block")
    specs: tuple[str, ...] = SPECS
    transformers: bool = True
    num_prompts: int | None = None
    """Bench prompts for the smollm2 section (None: all of them)."""
    max_tokens: int = 256
    dense_model: str = "random:llama-3.1-8b"
    dense_dtypes: tuple[str, ...] = ("bf16", "fp8-block")
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    batch_max_tokens: int = 128
    prompt_tokens: int = 128
    """Prompt length of the random-weight models' requests."""
    moe_model: str = "random:llama4-maverick"
    moe_dtype: str = "auto"
    moe_layers: int = 0
    """Layers of the MoE model; 0: as many as fit in the GPU's free memory (all of them on a CPU)."""
    kv_cache_tokens: int = 32 * 1024
    """KV-cache slots of every engine (fixed, rather than what free GPU memory allows, so that no engine's
    cache depends on what ran before it)."""
    compile: bool = True
    """kilotok's compiled decode step (the engine's default); --tiny turns it off to keep the dry run short."""
    copy_bytes: int = 4 * GiB

    def __post_init__(self) -> None:
        for what, asked, known in (("section", self.sections, SECTIONS), ("spec", self.specs, SPECS)):
            unknown = sorted(set(asked) - set(known))
            if unknown:
                raise InvalidRequestError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
        if self.max_tokens < 2 or self.batch_max_tokens < 2 or self.prompt_tokens < 1:
            raise InvalidRequestError("--max-tokens and --batch-max-tokens must be at least 2, --prompt-tokens 1")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.budget_s <= 0 or self.moe_layers < 0:
            raise InvalidRequestError("batch sizes and the budget must be positive, --moe-layers 0 or more")
        bench_prompts(self.num_prompts)


TINY = {"smollm_model": "random:tiny-llama", "dense_model": "random:tiny-llama", "moe_model": "random:tiny-llama4",
        "specs": ("none", "ngram"), "num_prompts": 2, "max_tokens": 6, "batch_sizes": (1, 3), "batch_max_tokens": 6,
        "prompt_tokens": 12, "kv_cache_tokens": 1024, "copy_bytes": 16 * 2**20, "compile": False}
"""What --tiny changes: small random models, few tokens (the shipped EAGLE-3 head fits the default model only)."""


class GpuE2eBench:
    """Runs the cases in order, each timed and recorded; `save` gets the document after every case."""

    def __init__(self, settings: GpuE2eSettings, save=None) -> None:
        self.settings = settings
        self.save = save
        self.device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if settings.device == "auto" else settings.device)
        self.deadline = time.monotonic() + settings.budget_s
        self.document: dict = {"kind": "kilotok bench gpu", "device": str(self.device), "device_name": _device_name(
            self.device), "torch_version": torch.__version__, "settings": asdict(settings), "cases": []}

    def run(self) -> dict:
        log(f"copy bandwidth: {self.settings.copy_bytes / GiB:.2f} GiB device-to-device")
        self.document["copy_gbps"] = cases.copy_bandwidth_gbps(self.device, self.settings.copy_bytes)
        cases.release_memory(self.device)
        for section in self.settings.sections:
            getattr(self, f"_{section}")()
        return self.document

    def _case(self, section: str, name: str, measure) -> dict:
        """Record one case: its figures, or the error that stopped it, or that the budget ran out first."""
        record = {"section": section, "name": name}
        if time.monotonic() >= self.deadline:
            record["status"] = "skipped: time budget spent"
        else:
            log(f"{section}: {name}")
            try:
                record |= {"status": "ok"} | cases.timed(measure)
            except Exception as error:  # a GPU lease is short: note it, measure the rest
                record |= {"status": "error", "error": repr(error)}
                log(f"  failed: {error!r}")
            finally:
                cases.release_memory(self.device)
        self.document["cases"].append(record)
        if self.save is not None:
            self.save(self.document)
        return record

    def _llm(self, model: str, dtype: str, spec: str = "none", max_num_seqs: int = 1):
        """An engine for at most `max_num_seqs` users (CUDA graphs are captured for each batch size up to it)."""
        from kilotok import LLM

        with tempfile.TemporaryDirectory() as folder:  # the tree policy is read when the engine starts
            options = {} if spec == "none" else {"spec": cases.bench_spec(spec, Path(folder))}
            return LLM(model, dtype=dtype, device=str(self.device), max_num_seqs=max_num_seqs,
                       kv_cache_blocks=self.settings.kv_cache_tokens // BLOCK_SIZE, block_size=BLOCK_SIZE,
                       compile=self.settings.compile, progress=False, **options)

    def _bandwidth(self, llm, decode_tokens_per_s: float) -> dict:
        weight_bytes = cases.weight_bytes_per_token(llm.engine.runner.model)
        achieved = weight_bytes * decode_tokens_per_s / 1e9
        return {"weight_bytes_per_token": weight_bytes, "weight_gbps": achieved,
                "copy_bandwidth_share": achieved / self.document["copy_gbps"]}

    def _smollm2(self) -> None:
        s = self.settings
        prompt_ids = self._smollm_prompts()
        # The headline first (bf16 against transformers), the other dtypes after: a budget cuts from the end.
        self._smollm2_kilotok(prompt_ids, s.smollm_dtypes[:1])
        if s.transformers:
            self._smollm2_transformers(prompt_ids)
        self._smollm2_kilotok(prompt_ids, s.smollm_dtypes[1:])

    def _smollm2_kilotok(self, prompt_ids: list[list[int]], dtypes: tuple[str, ...]) -> None:
        s = self.settings
        for dtype in dtypes:
            for spec in s.specs:
                def measure(dtype=dtype, spec=spec) -> dict:
                    llm = self._llm(s.smollm_model, dtype, spec)
                    runs = cases.time_prompts(llm, prompt_ids, s.max_tokens)
                    summary = cases.summarize_prompts(runs)
                    if spec == "none":
                        summary |= self._bandwidth(llm, summary["median_decode_tokens_per_s"])
                    tree = cases.SPEC_TREES.get(spec, {})
                    return ({"engine": "kilotok", "dtype": dtype, "spec": spec, "tree": tree} | cases.engine_facts(llm)
                            | summary | {"runs": runs})
                self._case("smollm2", f"kilotok {dtype} {spec}", measure)

    def _smollm2_transformers(self, prompt_ids: list[list[int]]) -> None:
        s = self.settings
        reference = next((c for c in self.document["cases"] if c.get("name") == "kilotok bf16 none"
                          and c["status"] == "ok"), None)
        # One model for both: the eager run (a dynamic cache) calls nothing the static run compiled.
        built = {}
        for static in (True, False):
            def measure(static=static) -> dict:
                hf = built.get("hf") or built.setdefault("hf", cases.transformers_model(s.smollm_model, self.device))
                runs = cases.time_transformers(hf, prompt_ids, s.max_tokens, static)
                agreeing = None if reference is None else sum(
                    run["token_ids"] == ref["token_ids"] for run, ref in zip(runs, reference["runs"], strict=True))
                return {"engine": "transformers", "dtype": "bf16", "static_cache": static,
                        "compiled": static and hasattr(hf, "_compiled_call"),  # generate() keeps it there
                        "prompts_agreeing_with_kilotok_bf16": agreeing} | cases.summarize_prompts(runs) | {"runs": runs}
            self._case("smollm2", "transformers static+compile" if static else "transformers eager", measure)
        built.clear()

    def _smollm_prompts(self) -> list[list[int]]:
        """The bench prompts in the model's chat template; random ids for a model without one."""
        from kilotok.models.registry import load_checkpoint

        tokenizer = load_checkpoint(self.settings.smollm_model, progress=False).tokenizer
        count = self.settings.num_prompts or len(bench_prompts())
        if tokenizer.chat_template is None:
            return cases.random_prompts(count, self.settings.prompt_tokens, tokenizer.vocab_size)
        return [tokenizer.encode_chat(conversation) for conversation in bench_prompts(count)]

    def _dense(self) -> None:
        """One case per dtype and batch size (a budget can stop between them), one engine per dtype."""
        s = self.settings
        for dtype in s.dense_dtypes:
            engine = {}
            for batch in s.batch_sizes:
                def measure(dtype=dtype, batch=batch, engine=engine) -> dict:
                    llm = engine.get("llm") or engine.setdefault(
                        "llm", self._llm(s.dense_model, dtype, max_num_seqs=max(s.batch_sizes)))
                    prompts = cases.random_prompts(batch, s.prompt_tokens, llm.engine.model_config.vocab_size, batch)
                    record = cases.time_batch(llm, prompts, s.batch_max_tokens)
                    if batch == 1:
                        record |= self._bandwidth(llm, record["per_user_decode_tokens_per_s"])
                    facts = {"engine": "kilotok", "model": s.dense_model, "dtype": dtype} | cases.engine_facts(llm)
                    return facts | record
                self._case("dense", f"kilotok {dtype} batch {batch}", measure)
            engine.clear()

    def _moe(self) -> None:
        s = self.settings
        most = s.moe_layers or self._moe_layers_that_fit()
        counts = sorted({most, most // 4 * 2} - {0})
        points = []
        for layers in reversed(counts):
            def measure(layers=layers) -> dict:
                model = f"{s.moe_model}:{layers}"
                llm = self._llm(model, s.moe_dtype)
                prompt = cases.random_prompts(1, s.prompt_tokens, llm.engine.model_config.vocab_size)
                record = cases.time_batch(llm, prompt, s.batch_max_tokens)
                return {"engine": "kilotok", "model": model, "layers": layers} | cases.engine_facts(llm) | record
            record = self._case("moe", f"kilotok {layers} layers", measure)
            if record["status"] == "ok":
                points.append(record)
        if len(points) == 2:
            full = random_model_config(s.moe_model)["num_hidden_layers"]
            self._case("moe", "per layer pair", lambda: cases.per_layer_cost(points, full))

    def _moe_layers_that_fit(self) -> int:
        config = random_model_config(self.settings.moe_model)
        if self.device.type != "cuda":
            return config["num_hidden_layers"]
        free, _ = torch.cuda.mem_get_info(self.device)
        reserve = 28 * GiB  # the KV cache, activations, CUDA graphs, the builder's temporaries
        return cases.layers_that_fit(config, free, reserve)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def summary_rows(document: dict) -> list[tuple[str, ...]]:
    rows = [("section", "case", "status", "tok/s per user", "total tok/s", "of copy bw", "accept len")]
    for case in document["cases"]:
        cells = ((case.get("median_decode_tokens_per_s", case.get("per_user_decode_tokens_per_s")), "{:.1f}"),
                 (case.get("total_decode_tokens_per_s"), "{:.1f}"), (case.get("copy_bandwidth_share"), "{:.0%}"),
                 (case.get("median_acceptance_length"), "{:.2f}"))
        rows.append((case["section"], case["name"], case["status"][:12],
                     *("-" if value is None else form.format(value) for value, form in cells)))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GpuE2eSettings()
    parser.add_argument("--sections", nargs="+", default=list(defaults.sections), choices=SECTIONS)
    parser.add_argument("--device", default=defaults.device, help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=defaults.budget_s,
                        help="start no case after this many seconds (default: %(default)s)")
    parser.add_argument("--specs", nargs="+", default=list(defaults.specs), choices=SPECS)
    parser.add_argument("--num-prompts", type=int, help="bench prompts in the smollm2 section (default: all)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(defaults.batch_sizes))
    parser.add_argument("--moe-layers", type=int, default=defaults.moe_layers,
                        help="layers of the MoE model (default 0: as many as fit)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers baselines")
    parser.add_argument("--no-compile", action="store_true", help="kilotok without its compiled decode step")
    parser.add_argument("--tiny", action="store_true", help="small random models and few tokens: a CPU dry run")
    parser.add_argument("--json-out", type=Path, help="write the results here, after every case")


def settings_from_args(args: argparse.Namespace) -> GpuE2eSettings:
    settings = GpuE2eSettings(sections=tuple(args.sections), device=args.device, budget_s=args.budget_s,
                              specs=tuple(args.specs), num_prompts=args.num_prompts, max_tokens=args.max_tokens,
                              batch_sizes=tuple(args.batch_sizes), moe_layers=args.moe_layers,
                              transformers=not args.no_transformers, compile=not args.no_compile)
    return replace(settings, **TINY) if args.tiny else settings


def run_from_args(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    save = None if args.json_out is None else (lambda document: write_json(args.json_out, document))
    bench = GpuE2eBench(settings, save)
    try:
        document = bench.run()
    except KeyboardInterrupt:  # the launcher's budget: what was measured is already saved
        print("stopped: the time budget ran out", file=sys.stderr)
        document = bench.document
    print("\n".join(table_lines(summary_rows(document), left_aligned=3)))
    print(f"device {document['device_name']}, copy bandwidth {document.get('copy_gbps', float('nan')):.0f} GB/s")
    failed = [c["name"] for c in document["cases"] if c["status"] == "error"]
    return 1 if failed else 0
