"""llama.cpp tensor names -> Hugging Face Llama names; undoing llama.cpp's Q/K row order."""

from __future__ import annotations

import re

import numpy as np

from kilotok.errors import ModelFormatError

GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
GLOBAL_PATTERN = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a llama.cpp tensor; unknown tensors are refused, not silently dropped."""
    if match := LAYER_PATTERN.fullmatch(gguf_name):
        layer, part, kind = match.groups()
        if part in LAYER_NAMES:
            return f"model.layers.{layer}.{LAYER_NAMES[part]}.{kind}"
    elif (match := GLOBAL_PATTERN.fullmatch(gguf_name)) and match.group(1) in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[match.group(1)]}.{match.group(2)}"
    raise ModelFormatError(
        f"GGUF tensor {gguf_name!r} is not part of a llama model kilotok can run (mixture-of-experts or a "
        "different architecture labelled llama?)"
    )


def rope_heads(name: str, config: dict) -> int | None:
    """How many heads llama.cpp interleaved this tensor's rows for (config.json fields), or None when it
    left them alone."""
    if ".self_attn.q_proj." in name:
        return config["num_attention_heads"]
    if ".self_attn.k_proj." in name:
        return config["num_key_value_heads"]
    return None


def unpermute_rows(num_rows: int, num_heads: int) -> np.ndarray:
    """Row order that undoes convert_hf_to_gguf's Q/K permutation.

    Hugging Face keeps each head's rotary pairs in two halves (rotate_half); llama.cpp's rope wants them
    adjacent, so the converter stores row (head, half, i) at (head, i, half). Row r of the result is the
    GGUF row that holds Hugging Face row r.
    """
    head_dim = num_rows // num_heads
    gguf_rows = np.arange(num_rows).reshape(num_heads, head_dim // 2, 2)
    return gguf_rows.transpose(0, 2, 1).reshape(-1)
