"""`kilotok quantize` folders: read back by hand (safetensors + numpy), by kilotok, and by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.models.builder import build_model
from kilotok.models.registry import load_checkpoint
from kilotok.quant.formats import resolve_weight_format
from kilotok.quant.quantize_checkpoint import quantize_checkpoint
from tests.models.moe_reference import perturb, save_folder
from tests.models.paged_forward import prompt_logits
from tests.quant.tiny_hf import TINY, save_tiny_llama

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
PROMPT = [5, 17, 33, 2, 91, 40, 8, 64, 12]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    folder = tmp_path_factory.mktemp("source")
    return folder, save_tiny_llama(folder)


def quantized_folder(source_folder: Path, tmp_path: Path, scheme: str) -> Path:
    return quantize_checkpoint(load_checkpoint(str(source_folder), progress=False), tmp_path / scheme, scheme)


def dequantize_by_hand(data: np.ndarray, scale: np.ndarray, block: tuple[int, int] | None) -> np.ndarray:
    """w = code * scale, scale repeated over its block (a scalar, one per row, or a grid)."""
    if scale.size == 1:
        return data * scale.reshape(())
    rows, cols = block or (1, data.shape[1])
    per_element = np.repeat(np.repeat(scale, rows, 0), cols, 1)
    return data * per_element[: data.shape[0], : data.shape[1]]


SCHEMES = {  # scheme -> (quant_method, scale suffix, block of the scale grid)
    "fp8-block": ("fp8", "_scale_inv", (128, 128)),
    "fp8-tensor": ("fp8", "_scale_inv", None),
    "fp8-channel": ("fbgemm_fp8", "_scale", None),
}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_layer_reads_back_as_stored(source, tmp_path, scheme):
    folder, model = source
    method, suffix, block = SCHEMES[scheme]
    out = quantized_folder(folder, tmp_path, scheme)

    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == method
    assert config.get("weight_block_size", None) == (list(block) if block else None)
    loaded = load_checkpoint(str(out), progress=False).weights
    state = model.state_dict()
    with safe_open(out / "model.safetensors", "pt") as stored:
        for layer in range(TINY["num_hidden_layers"]):
            for module in LINEARS:
                name = f"model.layers.{layer}.{module}.weight"
                data = stored.get_tensor(name)
                assert data.dtype == torch.float8_e4m3fn, name
                by_hand = dequantize_by_hand(data.float().numpy(), stored.get_tensor(name + suffix).numpy(), block)
                assert isinstance(loaded[name], Fp8Weight)
                np.testing.assert_array_equal(loaded[name].dequantize().numpy(), by_hand, err_msg=name)
                # Half an E4M3 step (2^-4 relative) of the block's largest value, at most.
                original = state[name].numpy()
                assert (np.abs(by_hand - original) <= np.abs(original).max() * 2.0**-4).all(), name
        for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
            assert torch.equal(stored.get_tensor(name), state[name]), name
            assert torch.equal(loaded[name], state[name]), name


def kilotok_logits(folder: Path, dtype: str) -> torch.Tensor:
    checkpoint = load_checkpoint(str(folder), progress=False)
    fmt = resolve_weight_format(dtype, checkpoint.weights)
    # `auto` runs a checkpoint holding FP8 weights as stored.
    assert fmt.name == {"fp32": "fp32", "auto": "fp8-stored"}[dtype]
    return prompt_logits(build_model(checkpoint, fmt, progress=False), PROMPT)


@pytest.mark.parametrize("scheme", ["fp8-block", "fp8-tensor"])
def test_transformers_reads_our_fp8_folder(source, tmp_path, scheme):
    out = quantized_folder(source[0], tmp_path, scheme)
    reference = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([PROMPT])).logits[0]

    # transformers dequantizes FP8 on the CPU, so its logits are those of the dequantized weights in fp32.
    assert (kilotok_logits(out, "fp32") - expected).abs().max() < 1e-4
    # kilotok's own FP8 path also quantizes activations and computes in bf16.
    # Each E4M3 rounding is within 2^-4 relative and they mostly cancel: a few percent in all.
    fp8 = kilotok_logits(out, "auto")
    assert (fp8 - expected).norm() < 0.1 * expected.norm()


@pytest.mark.parametrize("scheme", ["fp8-block", "fp8-channel"])
def test_moe_folder_keeps_routers_and_runs_close_to_the_source(tmp_path, scheme):
    """Expert and dense projections quantized, routers not; the scales load with their weights."""
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                            num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, mlp_only_layers=[0])
    reference = perturb(Qwen3MoeForCausalLM(config), 0, {"gate.weight": 5.0})
    source = save_folder(reference, tmp_path / "source")
    out = quantize_checkpoint(load_checkpoint(str(source), progress=False), tmp_path / scheme, scheme)

    weights = load_checkpoint(str(out), progress=False).weights

    assert isinstance(weights["model.layers.1.mlp.experts.3.down_proj.weight"], Fp8Weight)
    assert isinstance(weights["model.layers.0.mlp.down_proj.weight"], Fp8Weight)
    router = "model.layers.1.mlp.gate.weight"
    assert torch.equal(weights[router], reference.state_dict()[router])
    with torch.no_grad():
        expected = reference(torch.tensor([PROMPT])).logits[0]
    fp8 = kilotok_logits(out, "auto")
    assert (fp8 - expected).norm() < 0.1 * expected.norm()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="transformers' fbgemm_fp8 reader requires a GPU and "
                    "fbgemm-gpu (kilotok's reader of the format is checked above)")
def test_transformers_reads_our_fbgemm_folder(source, tmp_path):
    out = quantized_folder(source[0], tmp_path, "fp8-channel")
    reference = AutoModelForCausalLM.from_pretrained(out, device_map="cuda").eval()
    with torch.no_grad():
        expected = reference(torch.tensor([PROMPT], device="cuda")).logits[0].float().cpu()
    fp8 = kilotok_logits(out, "auto")
    assert (fp8 - expected).norm() < 0.1 * expected.norm()


def test_int8_folder_holds_per_channel_codes(source, tmp_path):
    folder, model = source
    out = quantized_folder(folder, tmp_path, "int8")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"]) == ("compressed-tensors", "pack-quantized")
    assert config["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
    name = "model.layers.1.mlp.down_proj"
    weight = model.state_dict()[name + ".weight"]
    with safe_open(out / "model.safetensors", "pt") as stored:
        packed, scale = stored.get_tensor(name + ".weight_packed"), stored.get_tensor(name + ".weight_scale")
        assert stored.get_tensor(name + ".weight_shape").tolist() == list(weight.shape)
    # By hand: scale = max|row| / 127 rounded to bf16, codes = round(w / scale), offset by 128, 4 bytes per int32.
    expected_scale = (weight.abs().amax(1, keepdim=True) / 127).bfloat16()
    expected_codes = torch.round(weight / expected_scale.float()).to(torch.int32)
    assert torch.equal(scale, expected_scale)
    codes = torch.from_numpy(packed.numpy().view("<u1").astype(np.int32) - 128).reshape(weight.shape)
    assert torch.equal(codes, expected_codes)
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    assert torch.equal(helpers.unpack_from_int32(packed, 8, weight.shape).to(torch.int32), expected_codes)


def test_fp8_formats_build_moe_experts_in_fp8(tmp_path):
    """An FP8 format quantizes routed experts too (not the router), and the model stays close to the source."""
    torch.manual_seed(1)
    config = Qwen3MoeConfig(vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                            num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, mlp_only_layers=[0])
    reference = perturb(Qwen3MoeForCausalLM(config), 0, {"gate.weight": 5.0})
    checkpoint = load_checkpoint(str(save_folder(reference, tmp_path / "source")), progress=False)
    model = build_model(checkpoint, "fp8-block", progress=False)
    moe = model.layers[1].mlp
    assert moe.gate_up.dtype == moe.down.dtype == torch.float8_e4m3fn
    assert moe.router.weight.dtype == torch.bfloat16
    with torch.no_grad():
        expected = reference(torch.tensor([PROMPT])).logits[0]
    assert (prompt_logits(model, PROMPT) - expected).norm() < 0.1 * expected.norm()
