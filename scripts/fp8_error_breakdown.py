"""Where fp8's perplexity cost comes from: each variant runs the bf16 model with FP8 (E4M3) rounding applied
to some projections' weights and/or input activations, through kilotok's own quantizers, and reports its
perplexity next to bf16's in the same run.

    /work/cpu-run env PYTHONPATH=$PWD .venv/bin/python scripts/fp8_error_breakdown.py --max-tokens 2048 \
        --variants bf16 w-block wa-block a-group128

A variant is `+`-joined parts: `w-SCHEME` (weights: tensor, channel, block), `a-token` or `a-group128`
(activations per token or per group of 128), `pow2` (scales rounded up to powers of two), and `only-KIND` /
`skip-KIND` (KIND: qkv, o, gate_up, down) to pick projections, `layers-A-B` to pick layers A..B-1.
`bf16` alone is the baseline.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from kilotok.eval.perplexity import SequenceLogits, score_tokens
from kilotok.eval.texts import DEFAULT_TEXT, load_text
from kilotok.layers.linear import DenseLinear
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from kilotok.quant.fp8 import quantize_activations, quantize_fp8

KINDS = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"}


class FakeFp8Linear(nn.Module):
    """A bf16 linear whose weight was rounded through E4M3 and whose input is rounded likewise per call."""

    def __init__(self, weight: torch.Tensor, act_group: int | None, pow2: bool) -> None:
        super().__init__()
        self.weight = weight.to(torch.bfloat16)
        self.act_group = act_group
        self.pow2 = pow2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_group is not None:
            group = min(self.act_group, x.shape[-1])
            values, scale = quantize_activations(x, group, pow2_scales=self.pow2)
            widened = scale.repeat_interleave(group, dim=-1)[..., : x.shape[-1]]
            x = (values.float() * widened).to(torch.bfloat16)
        return F.linear(x.to(torch.bfloat16), self.weight)


def parse_variant(name: str) -> dict:
    spec = {"weight": None, "act": None, "pow2": False, "kinds": set(KINDS), "layers": None}
    for part in name.split("+"):
        if part == "bf16":
            continue
        if part.startswith("w-"):
            spec["weight"] = part[2:]
        elif part == "a-token":
            spec["act"] = 1 << 30
        elif part.startswith("a-group"):
            spec["act"] = int(part[len("a-group"):])
        elif part == "pow2":
            spec["pow2"] = True
        elif part.startswith("only-"):
            spec["kinds"] = set(part[5:].split(","))
        elif part.startswith("skip-"):
            spec["kinds"] -= set(part[5:].split(","))
        elif part.startswith("layers-"):
            start, stop = part[7:].split("-")
            spec["layers"] = range(int(start), int(stop))
        else:
            raise SystemExit(f"unknown variant part {part!r}")
    return spec


def apply_variant(model: nn.Module, originals: dict[str, torch.Tensor], spec: dict) -> None:
    for index, layer in enumerate(model.layers):
        for kind, path in KINDS.items():
            parent_path, attr = path.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            weight = originals[f"{index}.{path}"]
            chosen = kind in spec["kinds"] and (spec["layers"] is None or index in spec["layers"])
            if chosen and spec["weight"] is not None:
                scheme, _, mse = spec["weight"].partition("-")
                weight = quantize_fp8(weight, scheme, pow2_scales=spec["pow2"], search_scales=bool(mse)).dequantize()
            act = spec["act"] if chosen else None
            setattr(parent, attr, FakeFp8Linear(weight, act, spec["pow2"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--context-len", type=int, default=1024)
    parser.add_argument("--variants", nargs="+", default=["bf16", "w-block", "w-block+a-group128"])
    args = parser.parse_args()
    torch.manual_seed(0)
    checkpoint = load_checkpoint(args.model, progress=False)
    token_ids = checkpoint.tokenizer.encode(load_text(DEFAULT_TEXT))[: args.max_tokens]
    reference = build_model(checkpoint, "fp32", progress=False)
    originals = {f"{i}.{path}": layer.get_submodule(path).weight.detach().float().clone()
                 for i, layer in enumerate(reference.layers) for path in KINDS.values()
                 if isinstance(layer.get_submodule(path), DenseLinear)}
    del reference
    model = build_model(checkpoint, "bf16", progress=False)
    scorer = SequenceLogits(model, args.context_len)
    baseline = None
    for name in args.variants:
        apply_variant(model, originals, parse_variant(name))
        result = score_tokens(scorer, token_ids, args.context_len)
        baseline = baseline or (result.perplexity if name == "bf16" else None)
        delta = None if baseline is None else 100 * (result.perplexity / baseline - 1)
        print(json.dumps({"variant": name, "perplexity": round(result.perplexity, 4),
                          "mean_nll": round(result.mean_nll, 5), "tokens": result.num_tokens,
                          "vs_bf16_percent": None if delta is None or math.isnan(delta) else round(delta, 2)}),
              flush=True)


if __name__ == "__main__":
    main()
