"""Where a closed loop of concurrent requests spends its time, through the engine alone (no server).

Keeps C greedy requests of N tokens (held-out chat prompts, EOS ignored) in flight until TOTAL have
finished, then prints the prompts' mean length, total output tokens/s and, per engine phase (scheduling,
prefill, decode, the decode step's forward, sampling, bookkeeping, output), ms per engine step and share
of the wall time. The phases nest (decode_rows and sample run inside decode and prefill), so shares do
not add up to 100%.

    python scripts/profile_serving.py --concurrency 32 --max-tokens 64 --total 64
"""

from __future__ import annotations

import argparse
import collections
import time

from kilotok.bench.prompts import load_chat_prompts
from kilotok.llm import LLM
from kilotok.sampling_params import SamplingParams


def timed(times: dict, counts: collections.Counter, obj: object, name: str) -> None:
    """Wrap obj.name so every call adds its wall time to times[name]."""
    method = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times[name] += time.perf_counter() - start
            counts[name] += 1

    setattr(obj, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--total", type=int, default=None, help="requests in all (default: 2 x concurrency)")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    total = args.total or 2 * args.concurrency
    llm = LLM(args.model)
    engine = llm.engine
    engine.warm_up(args.concurrency)
    times: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    for obj, name in [(engine.scheduler, "schedule"), (engine.scheduler, "postprocess"), (engine.decoder, "decode"),
                      (engine.decoder, "prefill"), (engine.runner, "decode_rows"), (engine.runner, "sample"),
                      (engine.outputs, "output")]:
        timed(times, counts, obj, name)
    prompts = load_chat_prompts()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    lengths: list[int] = []

    def add() -> None:
        ids = llm.encode(prompts[len(lengths) % len(prompts)])
        lengths.append(len(ids))
        engine.add_request(ids, params)

    for _ in range(args.concurrency):
        add()
    tokens = steps = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        steps += 1
        for seq, _ in engine.step():
            if seq.is_finished:
                tokens += seq.num_output_tokens
                if len(lengths) < total:
                    add()
    wall = time.perf_counter() - start
    print(f"prompt tokens mean {sum(lengths) / len(lengths):.0f} max {max(lengths)}")
    print(f"C={args.concurrency} N={args.max_tokens} requests={len(lengths)} tokens={tokens} wall={wall:.1f}s "
          f"total tok/s={tokens / wall:.1f} steps={steps}")
    for name, seconds in times.items():
        share = 100 * seconds / wall
        print(f"  {name:12s} {seconds * 1000 / steps:8.2f} ms/step  calls={counts[name]:<6d} {share:5.1f}%")


if __name__ == "__main__":
    main()
