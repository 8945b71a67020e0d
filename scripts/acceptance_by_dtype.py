"""EAGLE-3 acceptance per target dtype on held-out prompts: the engine's, and the chain estimate
(`kilotok/train/eval.py`) over the same answers with features from the target in that dtype.

    python scripts/acceptance_by_dtype.py --dtype int4 [--prompts 50] [--answers engine|stored]
        [--head DIR] [--no-prefix-cache] [--fp32-head-in-engine] [--json-out FILE]

For each held-out prompt (the first N of data/smollm2-135m-distill/held_out.jsonl.gz), with
`--answers engine` the engine answers it alone (batch 1, greedy, up to 192 tokens, EOS ends it, the
default tree forced at batch 1 as in docs/results/spec-policy-batch1-d3n3.json), which gives the
engine's acceptance and the target's own greedy answer in that dtype (greedy speculation keeps the
target's answer). `--answers stored` skips the engine and takes the stored answers (fp32 transformers on
a GPU, the answers the shipped head was trained and evaluated on). Then the target in that dtype, built by
kilotok's own builder (`auto` = int4 with the C++ op for the default GGUF), runs over prompt + answer
(train/features.py), and the head drafts chains from every answer position: unbounded (7 steps, the
training unroll) and capped at depth 3, the default tree's longest path (at most 4 tokens per forward).
Each is counted two ways: per position (train/eval.py's figure, every answer position once) and walked
(the positions the engine's forwards start at, which predicts the engine's tokens per forward). The head
runs in fp32 and with its linears int8 as the engine runs them (`kilotok::q8_linear`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import torch

from kilotok import LLM, SamplingParams
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint, model_config
from kilotok.quant.formats import resolve_weight_format
from kilotok.quant.lowbit import lowbit_available
from kilotok.sequence import SpecStats
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.eagle3.checkpoint import default_draft_path, load_eagle3
from kilotok.speculative.eagle3.drafter import _quantize_linears
from kilotok.speculative.policy import SpecPolicy, TreeShape
from kilotok.train.features import build_feature_set
from kilotok.train.init import dense_weight, target_head_weight
from kilotok.train.trainer import collate, unroll

MODEL = "smollm2-135m"
HELD_OUT = Path(__file__).resolve().parent.parent / "data" / "smollm2-135m-distill" / "held_out.jsonl.gz"
MAX_RESPONSE_TOKENS = 192  # as the stored answers
CHAIN_STEPS = 7  # the training unroll, as the 3.27 in docs/benchmarks.md
TREE_DEPTH = 3


def engine_answers(records: list[dict], dtype: str, head: str | None, prefix_cache: bool,
                   fp32_head: bool) -> tuple[list[list[int]], dict]:
    """Each prompt answered alone by the engine with the default tree forced at batch 1."""
    policy_file = Path(tempfile.mkdtemp()) / "batch1.json"
    SpecPolicy(((1, TreeShape(TREE_DEPTH, 3)),)).save(policy_file)
    spec = SpecConfig("eagle3", draft=head, depth=TREE_DEPTH, topk=1, tree_size=3, policy=str(policy_file))
    llm = LLM(MODEL, dtype=dtype, spec=spec, progress=False, enable_prefix_caching=prefix_cache)
    if fp32_head:
        from kilotok.speculative.eagle3.head_steps import HeadSteps

        drafter, model = llm.engine.decoder.drafter, llm.engine.runner.model
        drafter.head = load_eagle3(head or default_draft_path(MODEL), model.config, model.embed_tokens.weight)
        drafter.steps = HeadSteps(drafter.head, compile_steps=True)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_RESPONSE_TOKENS)
    total, per_prompt, forwards, answers = SpecStats(), [], [], []
    started = time.perf_counter()
    for record in records:
        output = llm.generate({"prompt_token_ids": record["prompt_token_ids"]}, params)[0]
        answers.append(list(output.token_ids))
        per_prompt.append(round(output.acceptance_length, 4))
        forwards.append(output.target_forwards)
        total.emitted_tokens += round(output.acceptance_length * output.target_forwards)
        total.target_forwards += output.target_forwards
        total.accepted_tokens += output.accepted_tokens
    report = {"acceptance_length": total.acceptance_length, "target_forwards": total.target_forwards,
              "accepted_tokens": total.accepted_tokens, "emitted_tokens": total.emitted_tokens,
              "per_prompt_median": sorted(per_prompt)[len(per_prompt) // 2], "per_prompt": per_prompt,
              "per_prompt_forwards": forwards,
              "prefix_cache": prefix_cache, "head": "fp32" if fp32_head else "int8 (q8_linear)",
              "wall_s": round(time.perf_counter() - started, 1)}
    return answers, report


@torch.inference_mode()
def accepted_counts(model, features, head_rows: torch.Tensor, steps: int, batch_size: int = 8) -> list[torch.Tensor]:
    """Per sequence, per window position t (from the unroll's start): how many leading chain drafts from t
    match the target's tokens; the same unroll and test as train/eval.py's estimate_acceptance, kept per
    position. Positions whose step-0 prediction is not a response token hold -1."""
    counts = []
    for first in range(0, len(features), batch_size):
        batch = collate(features, list(range(first, min(first + batch_size, len(features)))), head_rows)
        results = unroll(model, batch, steps)
        alive = results[0].valid.clone()
        count = torch.zeros(alive.shape, dtype=torch.long)
        for result in results:
            alive = alive & (model.draft_to_target(result.logits.argmax(dim=-1)) == result.next_tokens) & result.valid
            count += alive
        start = batch.token_ids.shape[1] - count.shape[1]
        for row in range(count.shape[0]):
            length = int(batch.lengths[row])
            counts.append((start, count[row, : length - start].where(results[0].valid[row, : length - start], -1)))
    return counts


def per_position(counts: list[tuple[int, torch.Tensor]], depth: int) -> float:
    """eval.py's figure: 1 + accepted drafts, averaged over every response position."""
    valid = torch.cat([c[c >= 0] for _, c in counts])
    return 1.0 + float(valid.clamp(max=depth).float().mean())


def walk(counts: list[tuple[int, torch.Tensor]], prompt_lens: list[int], depth: int) -> tuple[float, int]:
    """Tokens per target forward as the engine walks an answer: from the prefill's token on, each forward at
    position t (the last committed token is t + 1) keeps the accepted drafts and one token of its own,
    and the next forward starts after them. Easy stretches are crossed in few forwards, so this weighs
    positions as the engine visits them, unlike the per-position mean."""
    tokens = forwards = 0
    for (start, count), prompt_len in zip(counts, prompt_lens, strict=True):
        last = start + count.numel() - 1  # index of the answer's last token
        t = prompt_len - 1  # the prefill sampled token prompt_len; the first draft extends it
        while t + 1 < last:
            accepted = max(0, min(int(count[t - start]), depth))
            emitted = min(accepted + 1, last - (t + 1))
            tokens, forwards, t = tokens + emitted, forwards + 1, t + emitted
    return tokens / max(1, forwards), forwards


def chain_estimates(records: list[dict], dtype: str, head_folder: Path) -> dict:
    checkpoint = load_checkpoint(MODEL, progress=False)
    fmt = resolve_weight_format(dtype, checkpoint.weights)
    started = time.perf_counter()
    target = build_model(checkpoint, fmt, progress=False)
    embedding = dense_weight(checkpoint, "model.embed_tokens.weight")
    head = load_eagle3(head_folder, model_config(checkpoint.config), embedding).float()
    features = build_feature_set(target, records, tuple(head.config.aux_layer_ids), desc=f"features ({fmt.name})")
    feature_s = time.perf_counter() - started
    del target
    head_rows = target_head_weight(checkpoint)[head.draft_vocab_target_ids()]
    result = {"target_format": fmt.name, "features_s": round(feature_s, 1)}
    heads = [("fp32", head)]
    if lowbit_available():
        quantized = load_eagle3(head_folder, model_config(checkpoint.config), embedding).float()
        _quantize_linears(quantized)
        heads.append(("int8", quantized))
    prompt_lens = [len(r["prompt_token_ids"]) for r in records]
    for name, model in heads:
        started = time.perf_counter()
        counts = accepted_counts(model.eval(), features, head_rows, CHAIN_STEPS)
        walk_all, _ = walk(counts, prompt_lens, CHAIN_STEPS)
        walk_tree, forwards = walk(counts, prompt_lens, TREE_DEPTH)
        result[f"head_{name}"] = {
            "positions": sum(int((c >= 0).sum()) for _, c in counts),
            "chain_acceptance": round(per_position(counts, CHAIN_STEPS), 4),
            "chain_acceptance_depth3": round(per_position(counts, TREE_DEPTH), 4),
            "walk_acceptance": round(walk_all, 4),
            "walk_acceptance_depth3": round(walk_tree, 4),
            "walk_forwards_depth3": forwards,
            "wall_s": round(time.perf_counter() - started, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", type=int, default=50, help="the first N held-out prompts")
    parser.add_argument("--answers", default="engine",
                        help="engine, stored, or a JSON this script wrote (its engine answers, no engine run)")
    parser.add_argument("--head", default=None, help="head folder (default: the shipped head)")
    parser.add_argument("--no-prefix-cache", action="store_true")
    parser.add_argument("--fp32-head-in-engine", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    with gzip.open(HELD_OUT, "rt") as handle:
        records = [json.loads(line) for line in handle][: args.prompts]
    report: dict = {"dtype": args.dtype, "prompts": len(records), "answers": args.answers,
                    "head": args.head or "shipped", "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if args.answers == "engine":
        answers, report["engine"] = engine_answers(records, args.dtype, args.head, not args.no_prefix_cache,
                                                   args.fp32_head_in_engine)
        report["answers_equal_to_stored"] = sum(a == r["response_token_ids"] for a, r in zip(answers, records,
                                                                                            strict=True))
        report["answer_token_ids"] = answers
    elif args.answers != "stored":
        answers = json.loads(Path(args.answers).read_text())["answer_token_ids"][: len(records)]
    if args.answers != "stored":
        records = [dict(r, response_token_ids=a) for r, a in zip(records, answers, strict=True)]
    report["chain"] = chain_estimates(records, args.dtype, Path(args.head or default_draft_path(MODEL)))
    print(json.dumps({k: v for k, v in report.items() if k != "answer_token_ids"}, indent=1))
    if args.json_out:  # one line per key: the answers stay one line
        lines = ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in report.items())
        args.json_out.write_text("{\n" + lines + "\n}\n")


if __name__ == "__main__":
    main()
