"""Models with random weights at the real shapes of models too large to ship, built without a file:
`LLM("random:llama-3.1-8b", dtype="bf16")`, or `random:NAME:LAYERS` to keep the first LAYERS layers
(`random:llama4-maverick:12`). The benchmarks time these where only the shapes matter.

Every tensor is drawn when the builder first asks for it, on the GPU where there is one (drawing a
Maverick layer's 16 GB of experts on a CPU takes longer than a benchmark's whole lease; the builder moves
what it builds to the model's device either way), from a generator seeded by its name (so asking twice
gives the same tensor, as a tied head needs). Linear weights are N(0, 1/in_features), so activations
keep their scale through the layers; norm weights are near one; nothing is zero. Llama 4's routed experts
are stored in FP8 (128x128 blocks, as its FP8 release stores them in FP8): the builder keeps them as they
are under `auto` and FP8 formats, and a Maverick layer's experts never exist in a wider dtype.

The tokenizer is a plain word-level vocabulary (`t0`, `t1`, ...): prompts are token ids.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import tokenizers
import torch

from kilotok.errors import ModelNotFoundError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.fp8_weight import DEFAULT_BLOCK, FP8_DTYPE, Fp8Weight, scale_grid_shape
from kilotok.loader.tensor import Weight
from kilotok.tokenizer.tokenizer import Tokenizer

RANDOM_PREFIX = "random:"
# The context window is cut to this many positions (the rotary tables of a full window take GBs, and a
# benchmark never goes past a few hundred positions); every other field is the model's own.
CONTEXT = 8192

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-5,
          "max_position_embeddings": CONTEXT, "tie_word_embeddings": False, "bos_token_id": 1,
          "eos_token_id": 2}
_LLAMA4 = {"architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "rms_norm_eps": 1e-5,
           "max_position_embeddings": CONTEXT, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
           "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "use_qk_norm": True,
           "attention_chunk_size": CONTEXT, "no_rope_layer_interval": 4, "rope_theta": 500000.0}

RANDOM_MODELS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": _LLAMA | {
        "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": CONTEXT}},
    # Llama 4 Maverick's text model: 48 layers alternating dense and MoE (128 experts, top 1, plus a shared
    # expert), 17B parameters active per token out of 400B.
    "llama4-maverick": _LLAMA4 | {
        "vocab_size": 202048, "hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
        "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
        "num_local_experts": 128},
    # Small twins of the two, for tests and dry runs on a CPU.
    "tiny-llama": _LLAMA | {
        "vocab_size": 320, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2},
    "tiny-llama4": _LLAMA4 | {
        "vocab_size": 320, "hidden_size": 64, "intermediate_size": 96, "intermediate_size_mlp": 160,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "num_local_experts": 4},
}


def is_random_model(name: str) -> bool:
    return name.startswith(RANDOM_PREFIX)


def random_model_config(name: str) -> dict[str, Any]:
    """The config.json of `random:NAME[:LAYERS]`."""
    model, _, layers = name.removeprefix(RANDOM_PREFIX).partition(":")
    if model not in RANDOM_MODELS or (layers and not (layers.isdigit() and int(layers) >= 1)):
        raise ModelNotFoundError(f"{name!r}: random models are random:NAME or random:NAME:LAYERS (LAYERS >= 1), "
                                 f"NAME one of {', '.join(RANDOM_MODELS)}")
    config = dict(RANDOM_MODELS[model])
    if layers:
        config["num_hidden_layers"] = min(int(layers), config["num_hidden_layers"])
    return config


def random_checkpoint(name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                      seed: int = 0) -> Checkpoint:
    """A checkpoint of `config` whose weights (by Hugging Face name, with the `shapes` its family implies:
    models/family.py `expected_shapes`) are drawn on first use."""
    return Checkpoint(config, RandomWeights(shapes, seed), word_level_tokenizer(config), path=None, name=name)


class RandomWeights(Mapping[str, Weight]):
    """Weights drawn when asked for; the same name always gives the same values."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
        self._shapes = shapes
        self._seed = seed

    def __getitem__(self, name: str) -> Weight:
        shape = self._shapes[name]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        generator = torch.Generator(device).manual_seed(self._seed ^ zlib.crc32(name.encode()))
        if len(shape) == 1:
            return 1.0 + 0.1 * _normal(shape, torch.float32, generator)
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            return _fp8_experts(name, shape, generator)
        return _normal(shape, torch.bfloat16, generator) / math.sqrt(shape[-1])

    def __contains__(self, name: object) -> bool:
        return name in self._shapes  # without drawing the tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def _normal(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, generator=generator, device=generator.device)


def _fp8_experts(name: str, shape: tuple[int, ...], generator: torch.Generator) -> Fp8Weight:
    """Fused experts, stored as FP8 checkpoints store them: nn.Linear layout [E, out, in], block scales.
    Drawn one expert at a time, so no wider copy of the whole stack exists."""
    count, first, second = shape
    # Hugging Face's fused layout is x @ W ([E, in, out]); the FP8 layout turns it round.
    out_features, in_features = second, first
    data = torch.empty(count, out_features, in_features, dtype=FP8_DTYPE, device=generator.device)
    for expert in range(count):
        data[expert] = _normal((out_features, in_features), torch.bfloat16, generator).to(FP8_DTYPE)
    grid = scale_grid_shape(data.shape, DEFAULT_BLOCK)
    scale = (0.5 + torch.rand(grid, generator=generator, device=generator.device)) / math.sqrt(in_features)
    return Fp8Weight(data, scale, DEFAULT_BLOCK)


def word_level_tokenizer(config: dict[str, Any]) -> Tokenizer:
    """Token i is the word `t{i}`; decoding joins words with spaces."""
    vocab = {f"t{i}": i for i in range(config["vocab_size"])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, bos_token_id=config["bos_token_id"], eos_token_id=config["eos_token_id"],
                     name="a random model")
