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
from kilotok.loader.fp8_weight import FP8_DTYPE, FP8_MAX, expand_scale, fp8_scales
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from kilotok.quant.fp8 import quantize_fp8

SEARCH_STEPS = 32
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
            x = round_activations(x, min(self.act_group, x.shape[-1]), self.pow2)
        return F.linear(x.to(torch.bfloat16), self.weight)


def round_activations(x: torch.Tensor, group: int, pow2: bool) -> torch.Tensor:
    """x through E4M3 per group of `group` columns (kernels/fp8_gemm.py's quantizer, with optional
    power-of-two scales), back in bf16 as the CPU reference multiplies it."""
    width = x.shape[-1]
    groups = -(-width // group)
    grouped = F.pad(x.float(), (0, groups * group - width)).reshape(*x.shape[:-1], groups, group)
    scale = rounded_scales(grouped.abs().amax(dim=-1, keepdim=True), pow2)
    values = (grouped / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * scale
    return values.reshape(*x.shape[:-1], groups * group)[..., :width].to(torch.bfloat16)


def rounded_scales(amax: torch.Tensor, pow2: bool) -> torch.Tensor:
    """kilotok's scales (max |value| -> 448), or those rounded up to a power of two (max -> 224..448)."""
    scale = fp8_scales(amax)
    return torch.exp2(torch.ceil(torch.log2(scale))) if pow2 else scale


def round_weight(weight: torch.Tensor, scheme: str, pow2: bool, search: bool) -> torch.Tensor:
    """The weight through E4M3 as quantize_fp8 rounds it; `pow2` rounds the scales up to powers of two,
    `search` picks each block's scale among amax/448 * 2^(i/32), i = 0..32, for the least squared error."""
    quantized = quantize_fp8(weight, scheme)
    if not (pow2 or search):
        return quantized.dequantize()
    block = quantized.block
    base = rounded_scales(quantized.scale * FP8_MAX, pow2) if pow2 else quantized.scale
    candidates = [base] if pow2 else [base * 2 ** (i / SEARCH_STEPS) for i in range(SEARCH_STEPS + 1)]
    best, best_error = None, None
    for scale in candidates:
        expanded = expand_scale(scale, block, weight.shape)
        rounded = (weight / expanded).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * expanded
        error = block_sums((rounded - weight).square(), block)
        if best is None:
            best, best_error = rounded, error
            continue
        better = expand_scale((error < best_error).float(), block, weight.shape).bool()
        best = torch.where(better, rounded, best)
        best_error = torch.minimum(error, best_error)
    return best


def block_sums(values: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    rows, cols = values.shape
    grid = (-(-rows // block[0]), -(-cols // block[1]))
    padded = F.pad(values, (0, grid[1] * block[1] - cols, 0, grid[0] * block[0] - rows))
    return padded.reshape(grid[0], block[0], grid[1], block[1]).sum(dim=(1, 3))


def parse_variant(name: str) -> dict:
    spec = {"weight": None, "act": None, "pow2": False, "kinds": set(KINDS), "layers": None, "qkv_rows": None}
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
        elif part in ("rows-q", "rows-k", "rows-v"):
            spec["qkv_rows"] = part[5:]
        elif part.startswith("layers-"):
            start, stop = part[7:].split("-")
            spec["layers"] = range(int(start), int(stop))
        else:
            raise SystemExit(f"unknown variant part {part!r}")
    return spec


def qkv_rows(config, part: str) -> slice:
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {"q": slice(0, q_size), "k": slice(q_size, q_size + kv_size), "v": slice(q_size + kv_size, None)}[part]


def apply_variant(model: nn.Module, originals: dict[str, torch.Tensor], spec: dict) -> None:
    for index, layer in enumerate(model.layers):
        for kind, path in KINDS.items():
            parent_path, attr = path.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            weight = originals[f"{index}.{path}"]
            chosen = kind in spec["kinds"] and (spec["layers"] is None or index in spec["layers"])
            if chosen and spec["weight"] is not None:
                scheme, _, mse = spec["weight"].partition("-")
                rounded = round_weight(weight, scheme, spec["pow2"], bool(mse))
                if kind == "qkv" and spec["qkv_rows"]:
                    rows = qkv_rows(model.config, spec["qkv_rows"])
                    rounded, weight = weight.clone(), rounded
                    rounded[rows] = weight[rows]
                weight = rounded
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
