"""What a server's first requests wait for: the start-up time, then the wall time of each of a few requests
in turn at batch sizes 1 and 2 (the default model, compiled, greedy, 64 tokens each), with or without
`LLMEngine.warm_up` at start-up (what `kilotok serve` runs unless --no-warm-up).

    python scripts/first_requests.py [--spec eagle3|ngram|none] [--no-warm-up] [--max-num-seqs 4]

Drafting is forced at batch sizes 1 and 2 (a policy written to a temporary file), whatever the shipped
table says, as the Zen 4 table does. Set TORCHINDUCTOR_CACHE_DIR to an empty folder to time a first
start on a machine; inductor's on-disk cache otherwise serves the graphs compiled by earlier runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kilotok import LLM, SamplingParams
from kilotok.bench.prompts import bench_prompts
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.policy import SpecPolicy, TreeShape

BATCHES = (1, 1, 2, 2, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="eagle3", choices=["eagle3", "ngram", "none"])
    parser.add_argument("--no-warm-up", action="store_true")
    parser.add_argument("--max-num-seqs", type=int, default=4)
    args = parser.parse_args()
    policy = Path(tempfile.mkdtemp()) / "policy.json"
    SpecPolicy(((2, TreeShape(3, 3)),)).save(policy)
    start = time.perf_counter()
    llm = LLM("smollm2-135m", spec=SpecConfig(args.spec, policy=str(policy)), max_num_seqs=args.max_num_seqs,
              progress=False)
    if not args.no_warm_up:
        llm.engine.warm_up()
    print(f"start-up: {time.perf_counter() - start:.1f} s")
    prompts = iter(bench_prompts())
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    for index, batch in enumerate(BATCHES):
        start = time.perf_counter()
        llm.generate([next(prompts) for _ in range(batch)], params)
        print(f"request {index} (batch {batch}): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
