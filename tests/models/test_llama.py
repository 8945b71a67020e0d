"""Our Llama against transformers' LlamaForCausalLM on random small configs, with ragged batches; Llama
config.json fields (every family's base) read as transformers reads them, unsupported ones rejected."""

from __future__ import annotations

import pytest
import torch

from kilotok.errors import ModelFormatError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.models.builder import build_model
from kilotok.models.registry import model_config
from tests.models.paged_forward import attach_cache, paged_step

transformers = pytest.importorskip("transformers")

SMALL_LLAMA = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
LLAMA3_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

def _random_pair(tie: bool, rope_scaling: dict | None, seed: int = 0):
    torch.manual_seed(seed)
    hf_config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        rope_theta=5000.0, rope_scaling=rope_scaling,
    )
    reference = transformers.LlamaForCausalLM(hf_config).eval()
    # Random init leaves norms at 1; perturb them so a missing or swapped norm weight shows.
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    weights = {name: t.clone() for name, t in reference.state_dict().items()}
    checkpoint = Checkpoint(hf_config.to_dict(), weights, tokenizer=None, path=None, name="random")
    return reference, build_model(checkpoint, "fp32", progress=False)


@pytest.mark.parametrize(
    ("tie", "rope_scaling"),
    [
        (False, None),
        (True, None),
        (False, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 32}),
    ],
)
@torch.inference_mode()
def test_ragged_prefill_then_decode_matches_transformers(tie, rope_scaling):
    reference, model = _random_pair(tie, rope_scaling)
    attach_cache(model, num_blocks=64)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=generator).tolist() for n in (5, 11, 2)]
    # Scattered, non-contiguous blocks so a wrong block-table lookup cannot pass by accident.
    tables = [[7, 3, 20, 9, 30], [1, 40, 2, 15, 33, 5], [50, 12, 44]]
    ours = paged_step(model, prompts, [0, 0, 0], tables)
    for prompt, got in zip(prompts, ours, strict=True):
        expected = reference(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # Two batched decode steps continue from the cache.
    for _ in range(2):
        cached = [len(p) for p in prompts]
        for prompt, logits in zip(prompts, ours, strict=True):
            prompt.append(int(logits[-1].argmax()))
        ours = paged_step(model, prompts, cached, tables)
        for prompt, got in zip(prompts, ours, strict=True):
            expected = reference(torch.tensor([prompt])).logits[0, -1:]
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def assert_config_matches(config, hf) -> None:
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (
        hf.vocab_size, hf.hidden_size, hf.intermediate_size)
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (
        hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim)
    assert config.rms_norm_eps == hf.rms_norm_eps
    assert config.rope_theta == hf.rope_parameters["rope_theta"]
    assert config.max_position_embeddings == hf.max_position_embeddings
    assert config.tie_word_embeddings == hf.tie_word_embeddings
    assert config.bos_token_id == hf.bos_token_id
    eos = hf.eos_token_id
    assert config.eos_token_ids == (tuple(eos) if isinstance(eos, list) else (eos,))
    # MistralConfig has neither field: its projections never have biases.
    for bias in ("attention_bias", "mlp_bias"):
        assert getattr(config, bias) == getattr(hf, bias, False), bias


CONFIG_VARIANTS = {
    "untied-llama3-rope": ("LlamaConfig", dict(rope_parameters=LLAMA3_ROPE, eos_token_id=[2, 5])),
    "tied-biases-head-dim": ("LlamaConfig", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                                 head_dim=16, rope_theta=12345.0)),
    "mistral-without-sliding-window": ("MistralConfig", dict(sliding_window=None)),
}


@pytest.mark.parametrize("config_class,overrides", CONFIG_VARIANTS.values(), ids=CONFIG_VARIANTS.keys())
def test_config_json_reads_as_transformers_reads_it(config_class, overrides):
    hf_config = getattr(transformers, config_class)(**SMALL_LLAMA, **overrides)
    # What save_pretrained writes: only the fields that differ from the defaults, plus a few.
    config = model_config(hf_config.to_diff_dict())
    assert config.architecture == "llama"
    assert_config_matches(config, hf_config)
    if "rope_parameters" in overrides:
        scaling = config.rope_scaling
        assert tuple(getattr(scaling, k) for k in LLAMA3_FIELDS) == tuple(LLAMA3_ROPE[k] for k in LLAMA3_FIELDS)
    else:
        assert config.rope_scaling is None


def test_transformers4_rope_layout():
    raw = transformers.LlamaConfig(**SMALL_LLAMA).to_dict()
    del raw["rope_parameters"]
    raw["rope_theta"] = 500000.0
    raw["rope_scaling"] = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
    raw["rope_scaling"]["type"] = "llama3"
    config = model_config(raw)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling.factor == 8.0
    assert config.rope_scaling.original_max_position_embeddings == 64


@pytest.mark.parametrize("changes,message", [
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "'yarn'"),
    (dict(rope_parameters=None, rope_scaling={"type": "linear", "factor": 2.0}), "'linear'"),
    (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    (dict(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=512), "sliding window"),
    (dict(quantization_config={"quant_method": "gptq"}), "gptq"),
    (dict(hidden_act="gelu"), "gelu"),
    (dict(num_hidden_layers=None), "num_hidden_layers"),
])
def test_unsupported_configs_are_rejected(changes, message):
    with pytest.raises(ModelFormatError, match=message):
        model_config(transformers.LlamaConfig(**SMALL_LLAMA).to_dict() | changes)
