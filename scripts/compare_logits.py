"""Compare kilotok's logits with transformers' on the default model, per weight format (docs/accuracy.md).

Usage: .venv/bin/python scripts/compare_logits.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "models"))

from paged_forward import attach_cache, paged_step  # noqa: E402
from test_llama_default import TEXTS  # noqa: E402

from kilotok.loader.registry import load_checkpoint, resolve_model  # noqa: E402
from kilotok.models.builder import WEIGHT_MODES, build_model  # noqa: E402


@torch.inference_mode()
def main() -> None:
    from transformers import AutoModelForCausalLM

    path = resolve_model("smollm2-135m")
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    checkpoint = load_checkpoint("smollm2-135m", progress=False)
    prompts = [checkpoint.tokenizer.encode(text) for text in TEXTS]
    expected = [reference(torch.tensor([p])).logits[0] for p in prompts]
    tables = [list(range(1 + 30 * i, 1 + 30 * (i + 1))) for i in range(len(prompts))]
    print("dtype  max|logit diff|  next-token argmax agreement")
    for mode in (m for m in WEIGHT_MODES if m != "fp16"):
        model = build_model(checkpoint, mode, progress=False)
        attach_cache(model, num_blocks=128)
        ours = paged_step(model, prompts, [0] * len(prompts), tables)
        worst = max((got - want).abs().max().item() for got, want in zip(ours, expected, strict=True))
        agree = sum((got.argmax(-1) == want.argmax(-1)).sum().item() for got, want in zip(ours, expected, strict=True))
        print(f"{mode:5}  {worst:15.2e}  {agree}/{sum(len(p) for p in prompts)}")


if __name__ == "__main__":
    main()
