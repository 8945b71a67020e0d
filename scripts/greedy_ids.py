"""Greedy token ids of the bench prompts in several weight formats, with and without speculation, as JSON.

Two commits behave the same when their files are equal. The default model, 8 bench prompts batched
together and the first 3 alone, EOS ignored.

usage: python scripts/greedy_ids.py OUT.json [--max-tokens 96] [--dtypes fp32,int4] [--specs none,ngram,eagle3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kilotok import LLM, SamplingParams
from kilotok.bench.prompts import bench_prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--dtypes", default="fp32,int4")
    parser.add_argument("--specs", default="none,ngram,eagle3")
    args = parser.parse_args()
    prompts = bench_prompts()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    results = {}
    for dtype in args.dtypes.split(","):
        for spec in args.specs.split(","):
            start = time.time()
            llm = LLM("smollm2-135m", dtype=dtype, spec=None if spec == "none" else spec, progress=False)
            batched = [output.token_ids for output in llm.generate(prompts, params)]
            alone = [llm.generate(prompt, params)[0].token_ids for prompt in prompts[:3]]
            results[f"{dtype}/{spec}"] = {"batched": batched, "alone": alone}
            print(f"{dtype}/{spec}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    with open(args.out, "w") as file:
        json.dump(results, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
