"""`kilotok bench spec-policy`: measure which draft tree pays at each batch size, and store the table.

For every batch size B, B chat prompts decode together (greedy, EOS ignored) once per candidate tree
shape, "0" (no drafting) included; the shape with the highest total decode rate wins that batch size.
The result is a spec policy JSON (`kilotok.speculative.policy`) that `--spec-policy FILE` gives the engine, so
speculation shrinks, then stops, as the batch grows, by what this machine measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from kilotok.bench.prompts import cycled_bench_prompts
from kilotok.bench.report import log, machine_info, write_json
from kilotok.engine.args import add_spec_args, spec_config
from kilotok.errors import InvalidRequestError
from kilotok.speculative.policy import SpecPolicy, TreeShape

CLI_HELP = "measure the best draft tree per batch size and write a speculation policy file"
DEFAULT_SHAPES = "0,3x3,5x5,6x10"
DEFAULT_BATCH_SIZES = "1,2,4,8,16"


def parse_shapes(text: str) -> list[TreeShape | None]:
    """"0,3x3,6x10" -> [None, TreeShape(3, 3), TreeShape(6, 10)] (DEPTHxTREE_SIZE; 0 = no drafting)."""
    shapes: list[TreeShape | None] = []
    for item in text.split(","):
        depth, _, size = item.strip().partition("x")
        try:
            shapes.append(None if item.strip() == "0" else TreeShape(int(depth), int(size)))
        except ValueError as error:
            raise InvalidRequestError(f"tree shape {item!r} must be 0 or DEPTHxTREE_SIZE, like 5x8") from error
    if any(shape is not None and min(shape.depth, shape.tree_size) < 1 for shape in shapes):
        raise InvalidRequestError(f"tree shapes {text!r} need depth and tree size of at least 1")
    return shapes


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(item) for item in text.split(",")})
    except ValueError as error:
        raise InvalidRequestError(f"--batch-sizes must be comma-separated integers, got {text!r}") from error
    if sizes[0] < 1:
        raise InvalidRequestError(f"--batch-sizes must be positive, got {text!r}")
    return sizes


def decode_rate(llm, batch_size: int, max_tokens: int) -> tuple[float, float]:
    """Total output tokens/s of `batch_size` prompts decoding together, and their mean acceptance."""
    from kilotok import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate(cycled_bench_prompts(batch_size), params)
    first_token = max(o.ttft_s for o in outputs)  # decoding is timed once every prompt is prefilled
    elapsed = time.perf_counter() - started - first_token
    tokens = sum(o.num_output_tokens - 1 for o in outputs)
    return tokens / elapsed, sum(o.acceptance_length for o in outputs) / len(outputs)


def calibrate(llm, batch_sizes: list[int], shapes: list[TreeShape | None], max_tokens: int) -> tuple[SpecPolicy, list]:
    speculator = llm.engine.decoder
    measurements = []
    limits = []
    for batch_size in batch_sizes:
        best = None
        for shape in shapes:
            speculator.policy = SpecPolicy.fixed(shape) if shape else SpecPolicy(())
            # The same run once untimed: it compiles every graph this batch and tree need (the head's
            # steps, and verify graphs for the trees cut short near max_tokens) outside the timing.
            decode_rate(llm, batch_size, max_tokens)
            rate, acceptance = decode_rate(llm, batch_size, max_tokens)
            label = "0" if shape is None else f"{shape.depth}x{shape.tree_size}"
            log(f"batch {batch_size:3d} tree {label:>6}: {rate:8.1f} tok/s total, acceptance {acceptance:.2f}")
            measurements.append({"batch_size": batch_size, "shape": label, "tokens_per_s": rate,
                                 "acceptance_length": acceptance})
            if best is None or rate > best[0]:
                best = (rate, shape)
        limits.append((batch_size, best[1]))
    return SpecPolicy(tuple(limits)), measurements


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="model name, GGUF file or HF folder")
    parser.add_argument("--dtype", default="auto", help="kilotok compute dtype (default: auto)")
    add_spec_args(parser)
    parser.add_argument("--batch-sizes", default=DEFAULT_BATCH_SIZES, help="default: %(default)s")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="candidate trees, DEPTHxTREE_SIZE, 0 for none (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per prompt (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="the policy JSON to write")


def run_from_args(args: argparse.Namespace) -> int:
    from kilotok import LLM

    if args.spec == "none":
        raise InvalidRequestError("--spec must name a method (ngram or eagle3) to calibrate")
    shapes = parse_shapes(args.shapes)
    drafted = [shape for shape in shapes if shape is not None]
    largest = TreeShape(max((s.depth for s in drafted), default=1), max((s.tree_size for s in drafted), default=1))
    spec = replace(spec_config(args), depth=largest.depth, tree_size=largest.tree_size)
    machine = machine_info()
    llm = LLM(args.model, dtype=args.dtype, progress=False, spec=spec)
    policy, measurements = calibrate(llm, parse_batch_sizes(args.batch_sizes), shapes, args.max_tokens)
    policy.save(args.out)
    record = {"machine": machine, "command": " ".join(sys.argv), "measurements": measurements, **policy.to_json()}
    write_json(args.out.with_suffix(".measurements.json"), record)
    print(json.dumps(policy.to_json(), indent=2))
    return 0
