"""The GGUF loader against transformers' GGUF loading, an independent dequantizer and exact math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from kilotok.loader.gguf_config import fit_llama3_scaling
from kilotok.loader.gguf_loader import load_gguf, open_gguf, read_gguf_config, weights_from_gguf
from kilotok.loader.tensor import QuantizedTensor
from kilotok.models.registry import expected_tensors, model_config
from tests.loader.tiny_gguf import HEAD_DIM, HEADS, HIDDEN, KV_HEADS, Q, TinyTensor, llama_cpp_permute, write_tiny_llama

ALL_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
             Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
# relative RMS error of quantize -> dequantize on Gaussian weights, with room to spare
QUANTIZATION_ERROR = {Q.Q8_0: 0.01, Q.Q5_0: 0.06, Q.Q5_1: 0.06, Q.Q4_0: 0.12, Q.Q4_1: 0.12}


def as_float(weight) -> torch.Tensor:
    return weight.dequantize() if isinstance(weight, QuantizedTensor) else weight


@pytest.fixture(scope="module")
def default_checkpoint(default_gguf_path):
    return load_gguf(default_gguf_path, expected_tensors, progress=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A file with one layer per type, an untied Q6_K head and its expected tensors."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    expected = write_tiny_llama(path, ALL_TYPES, output_type=Q.Q6_K)
    reader = open_gguf(path)
    return path, expected, weights_from_gguf(reader, read_gguf_config(reader, path))


@pytest.mark.slow
def test_default_model_weights_equal_transformers(default_checkpoint, hf_reference_model):
    reference = hf_reference_model.state_dict()
    assert default_checkpoint.config["tie_word_embeddings"]
    assert set(default_checkpoint.weights) == set(reference) - {"lm_head.weight"}
    for name, expected in reference.items():
        ours = as_float(default_checkpoint.weights[name.replace("lm_head", "model.embed_tokens")])
        assert ours.dtype == torch.float32 and ours.shape == expected.shape, name
        assert (ours - expected).abs().max().item() < 1e-6, name


@pytest.mark.slow
def test_default_model_config_equals_transformers(default_checkpoint, hf_reference_model):
    """The GGUF metadata written as config.json holds what transformers reads from the same file."""
    ours, theirs = default_checkpoint.config, hf_reference_model.config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
            "bos_token_id", "eos_token_id")
    for key in keys:
        assert ours[key] == getattr(theirs, key), key
    assert ours["rope_theta"] == theirs.rope_parameters["rope_theta"]
    assert (ours["architectures"], ours["model_type"]) == (["LlamaForCausalLM"], "llama")
    assert "rope_scaling" not in ours


def test_default_model_keeps_quantized_blocks(default_checkpoint, hf_reference_tokenizer):
    weights = default_checkpoint.weights
    q_proj = weights["model.layers.0.self_attn.q_proj.weight"]
    embedding = weights["model.embed_tokens.weight"]
    assert isinstance(q_proj, QuantizedTensor) and q_proj.qtype == GGMLQuantizationType.Q4_1
    assert q_proj.shape == (576, 576) and q_proj.data.shape == (576, 576 // 32 * 20)
    assert isinstance(embedding, QuantizedTensor) and embedding.qtype == GGMLQuantizationType.Q8_0
    assert weights["model.norm.weight"].dtype == torch.float32
    text = "Hello, world! Quantized weights stay as blocks."
    assert default_checkpoint.tokenizer.encode(text) == hf_reference_tokenizer.encode(text)
    assert default_checkpoint.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_tiny_model_of_every_type_equals_transformers(tiny_model):
    from transformers import AutoModelForCausalLM

    path, _, weights = tiny_model
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    state = reference.state_dict()
    assert set(weights) == set(state)
    for name, expected in state.items():
        assert torch.equal(as_float(weights[name]), expected), name


def test_weights_come_back_as_written(tiny_model):
    _, expected, weights = tiny_model
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        ours = weights[name]
        assert tuple(ours.shape) == tensor.shape, name
        if tensor.qtype in FLOAT_TYPES:
            assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32, name
            assert torch.equal(ours, torch.from_numpy(decode_float(tensor))), name
        else:
            assert isinstance(ours, QuantizedTensor) and ours.qtype == tensor.qtype, name
            assert np.array_equal(ours.data, tensor.stored), name


def decode_float(tensor: TinyTensor) -> np.ndarray:
    """bf16 is the top half of an fp32; numpy has no bf16, so shift the bits into place."""
    if tensor.qtype == Q.BF16:
        return (tensor.stored.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return tensor.stored.astype(np.float32)


def test_dequantization_equals_transformers_torch_decoder(tiny_model):
    from transformers.integrations.gguf.dequant import GGML_BLOCK, dequantize

    _, expected, weights = tiny_model
    checked = set()
    for name, tensor in expected.items():
        if tensor.qtype in GGML_BLOCK:
            reference = dequantize(torch.from_numpy(tensor.stored.copy()), int(tensor.qtype))
            assert torch.equal(weights[name].dequantize().reshape(-1), reference), name
            checked.add(tensor.qtype)
    assert checked >= {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}


def test_dequantization_is_close_to_the_quantized_floats(tiny_model):
    _, expected, weights = tiny_model
    for name, tensor in expected.items():
        if tensor.qtype in QUANTIZATION_ERROR:
            error = weights[name].dequantize().numpy() - tensor.original
            relative_rms = np.sqrt(np.mean(error**2) / np.mean(tensor.original**2))
            assert relative_rms < QUANTIZATION_ERROR[tensor.qtype], name


def test_attention_biases_are_unpermuted_like_weights(tmp_path):
    """transformers' GGUF config drops biases; the oracle is the converter's permutation, undone by hand."""
    rng = np.random.default_rng(1)
    sizes = {"q": HEADS * HEAD_DIM, "k": KV_HEADS * HEAD_DIM, "v": KV_HEADS * HEAD_DIM, "o": HIDDEN}
    biases = {proj: rng.standard_normal(size).astype(np.float32) for proj, size in sizes.items()}
    written = {"q": llama_cpp_permute(biases["q"], HEADS), "k": llama_cpp_permute(biases["k"], KV_HEADS),
               "v": biases["v"], "output": biases["o"]}
    path = tmp_path / "biased.gguf"
    write_tiny_llama(path, replace={f"blk.0.attn_{name}.bias": data for name, data in written.items()})
    reader = open_gguf(path)
    config = read_gguf_config(reader, path)
    weights = weights_from_gguf(reader, config)
    assert config["attention_bias"] and not config["mlp_bias"]
    for proj, expected in biases.items():
        assert torch.equal(weights[f"model.layers.0.self_attn.{proj}_proj.bias"], torch.from_numpy(expected))


def transformers_llama3_inv_freq(theta: float, head_dim: int, rope: dict) -> torch.Tensor:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         rope_parameters={"rope_type": "llama3", "rope_theta": theta, **rope})
    return ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")[0].double()


def llama3_rope_freqs(theta: float, head_dim: int, rope: dict) -> np.ndarray:
    """What convert_hf_to_gguf stores in rope_freqs.weight: how much scaling divides each frequency by."""
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return (plain / transformers_llama3_inv_freq(theta, head_dim, rope)).numpy()


LLAMA_31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
LLAMA_32 = {**LLAMA_31, "factor": 32.0}


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("rope", [LLAMA_31, LLAMA_32, {**LLAMA_31, "low_freq_factor": 2.0,
                                                        "original_max_position_embeddings": 4096}])
def test_llama3_scaling_recovered_from_rope_freqs(head_dim, rope):
    theta = 500000.0
    recovered = fit_llama3_scaling(llama3_rope_freqs(theta, head_dim, rope), theta, head_dim, 8192)
    assert sorted(recovered) == sorted(rope)
    torch.testing.assert_close(transformers_llama3_inv_freq(theta, head_dim, recovered),
                               transformers_llama3_inv_freq(theta, head_dim, rope), rtol=1e-5, atol=0)


def test_rope_freqs_tensor_becomes_config_not_weight(tmp_path):
    path, theta = tmp_path / "llama3.gguf", 500000.0
    factors = llama3_rope_freqs(theta, HEAD_DIM, LLAMA_32).astype(np.float32)
    write_tiny_llama(path, metadata={"rope.freq_base": theta, "tokenizer.ggml.eot_token_id": 3},
                     replace={"rope_freqs.weight": factors})
    reader = open_gguf(path)
    config = read_gguf_config(reader, path)
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["eos_token_id"] == [2, 3]
    model = model_config(config)
    assert model.rope_scaling is not None and model.rope_scaling.factor == pytest.approx(32.0)
    assert model.eos_token_ids == (2, 3)
    assert "rope_freqs.weight" not in weights_from_gguf(reader, config)
