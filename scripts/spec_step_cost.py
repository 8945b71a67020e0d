"""Where an EAGLE-3 step's time goes: the head's catch-up, the whole draft (catch-up and expansion), the
verify forward and the whole step, timed by wrapping the drafter's and the runner's methods while
`LLM.generate` decodes the bench prompts `--batch` at a time (the default model, default weights,
compiled, greedy).

    python scripts/spec_step_cost.py [--batch 1] [--prompts 4] [--max-tokens 96] [--depth 3] [--topk 1]
                                     [--tree-size 3] [--fp32-head] [--no-prefix-cache]

Drafting is forced up to `--batch` (a one-row policy written to a temporary file), whatever the shipped
table says. Prints one JSON object: medians in ms per step, and tokens per step and sequence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from kilotok import LLM, SamplingParams
from kilotok.bench.prompts import bench_prompts
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.policy import SpecPolicy, TreeShape


def timed(owner, name: str, times: dict[str, list[float]]) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        times[name].append(1000 * (time.perf_counter() - start))
        return result

    setattr(owner, name, wrapper)


def use_fp32_head(llm: LLM) -> None:
    """Swap in the shipped head as loaded, before its linear layers are quantized."""
    from kilotok.speculative.eagle3.checkpoint import default_draft_path, load_eagle3
    from kilotok.speculative.eagle3.head_steps import HeadSteps

    drafter, model = llm.engine.decoder.drafter, llm.engine.runner.model
    drafter.head = load_eagle3(default_draft_path(llm.engine.model_name), model.config, model.embed_tokens.weight)
    drafter.steps = HeadSteps(drafter.head, compile_steps=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="prompts decoding together")
    parser.add_argument("--tree-size", type=int, default=3)
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="prefill whole prompts: the head then sees every prompt position's features")
    parser.add_argument("--fp32-head", action="store_true",
                        help="the head's linear layers in fp32 instead of int8 (to compare acceptance)")
    args = parser.parse_args()
    policy_file = Path(tempfile.mkdtemp()) / "batch1.json"
    SpecPolicy(((args.batch, TreeShape(args.depth, args.tree_size)),)).save(policy_file)
    spec = SpecConfig("eagle3", depth=args.depth, topk=args.topk, tree_size=args.tree_size, policy=str(policy_file))
    llm = LLM("smollm2-135m", spec=spec, progress=False, enable_prefix_caching=not args.no_prefix_cache)
    if args.fp32_head:
        use_fp32_head(llm)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    # The 8 bench prompts in turn, B at a time (repeating from the first past 8: with --no-prefix-cache a
    # repeated prompt is prefilled, and its features collected, as the first time).
    prompts = bench_prompts(8)
    batches = [[prompts[(index * args.batch + row) % len(prompts)] for row in range(args.batch)]
               for index in range(args.prompts + 1)]
    llm.generate(batches[0], params)  # compiles the graphs the timed steps use
    decoder = llm.engine.decoder
    times: dict[str, list[float]] = defaultdict(list)
    for name in ("catch_up", "propose"):
        timed(decoder.drafter, name, times)
    timed(decoder.runner, "decode_rows", times)
    timed(decoder, "decode", times)
    outputs = [output for batch in batches[1:] for output in llm.generate(batch, params)]
    steps = len(times["decode"])
    median = {name: round(statistics.median(values), 3) for name, values in times.items()}
    report = {
        "steps": steps,
        "tokens_per_step": round(sum(o.num_output_tokens - 1 for o in outputs) / steps / args.batch, 3),
        "acceptance_lengths": [round(o.acceptance_length, 3) for o in outputs],
        "median_ms": median,
        "draft_ms_per_step": round(sum(times["propose"]) / steps, 3),
        "verify_ms_per_step": round(sum(times["decode_rows"]) / steps, 3),
        "step_ms": round(sum(times["decode"]) / steps, 3),
        "settings": vars(args),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
