"""Our fp32 Llama on the default model's dequantized weights against transformers' LlamaForCausalLM."""

from __future__ import annotations

import pytest
import torch

from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from tests.models.paged_forward import attach_cache, paged_step

TEXTS = [
    "<|im_start|>user\nWhat is the tallest mountain on Earth?<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\ndef softmax(x):\n    ",
    "Once upon a time, in a village by the sea, there lived",
]


@pytest.mark.slow
@torch.inference_mode()
def test_default_model_logits_match_transformers(hf_reference_model):
    checkpoint = load_checkpoint("smollm2-135m", progress=False)
    model = build_model(checkpoint, "fp32", progress=False)
    attach_cache(model, num_blocks=128)
    prompts = [checkpoint.tokenizer.encode(text) for text in TEXTS]
    tables = [list(range(1 + 30 * i, 1 + 30 * (i + 1))) for i in range(len(prompts))]
    ours = paged_step(model, prompts, [0] * len(prompts), tables)
    worst = 0.0
    for prompt, got in zip(prompts, ours, strict=True):
        expected = hf_reference_model(torch.tensor([prompt])).logits[0]
        worst = max(worst, (got - expected).abs().max().item())
    assert worst < 1e-3
