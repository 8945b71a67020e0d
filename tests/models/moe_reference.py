"""Random small mixture-of-experts models from transformers, saved as Hugging Face folders for kilotok to
load through its normal loader; transformers' model is the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

VOCAB = 96


def perturb(model, seed: int, scale: dict[str, float] | None = None):
    """Random init leaves norms at 1 and routers near-uniform; perturb norms (so a missing or swapped norm
    shows) and scale chosen parameters (routers, experts) so each part moves the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
            for key, factor in (scale or {}).items():
                if key in name:
                    param.mul_(factor)
    return model.eval()


def save_folder(model, folder: Path) -> Path:
    """save_pretrained plus a word-level tokenizer.json (token i is the word `t{i}`)."""
    model.save_pretrained(folder)
    config = getattr(model.config, "text_config", model.config)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    # A chat template that just joins the messages, for code paths that take chat prompts (train-draft).
    template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "t1", "bos_token": "t0",
                                                              "chat_template": template}))
    return folder


def random_prompts(lengths: tuple[int, ...], seed: int = 1, vocab: int = VOCAB) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=generator).tolist() for n in lengths]
