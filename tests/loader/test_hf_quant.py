"""Pre-quantized folders: fbgemm_fp8 layouts read by hand, and bad quantization configs or scales named (NaN
and infinity by the tensor check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.loader.hf_quant import attach_fp8_scales
from kilotok.loader.tensor_check import check_tensors
from kilotok.models.registry import load_checkpoint
from kilotok.quant.quantize_checkpoint import quantize_checkpoint
from tests.quant.tiny_hf import save_tiny_llama

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
UP_PROJ = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def block_folder(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    save_tiny_llama(source)
    return quantize_checkpoint(load_checkpoint(str(source), progress=False),
                               tmp_path_factory.mktemp("quantized") / "fp8", "fp8-block")


def edited_copy(folder: Path, tmp_path: Path, edit_tensors=None, edit_config=None) -> Path:
    copy = tmp_path / "edited"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    if edit_tensors:
        tensors = load_file(copy / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, copy / "model.safetensors")
    if edit_config:
        config = json.loads((copy / "config.json").read_text())
        edit_config(config)
        (copy / "config.json").write_text(json.dumps(config))
    return copy


def random_fp8(*shape: int) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 100).to(torch.float8_e4m3fn)


def test_fbgemm_linear_and_stacked_experts_by_hand():
    experts, hidden, inner = 3, 32, 16
    tensors = {
        "a.weight": random_fp8(48, 32), "a.weight_scale": torch.rand(48, 1),
        "e.gate_up_proj": random_fp8(experts, hidden, 2 * inner), "e.gate_up_proj_scale": torch.rand(experts, 1,
                                                                                                     2 * inner),
        "e.down_proj": random_fp8(experts, inner, hidden), "e.down_proj_scale": torch.rand(experts, hidden, 1),
        "a.input_scale_ub": torch.tensor([1200.0]), "norm.weight": torch.ones(32),
    }
    weights = attach_fp8_scales(tensors, {"quant_method": "fbgemm_fp8", "modules_to_not_convert": ["lm_head"]})

    assert sorted(weights) == ["a.weight", "e.down_proj", "e.gate_up_proj", "norm.weight"]
    linear = weights["a.weight"]
    assert linear.scheme == "channel"
    assert torch.equal(linear.dequantize(), tensors["a.weight"].float() * tensors["a.weight_scale"])
    for name, scale_shape in (("e.gate_up_proj", (experts, 1, -1)), ("e.down_proj", (experts, 1, -1))):
        stored, scale = tensors[name].float(), tensors[name + "_scale"].reshape(scale_shape)
        expected = (stored * scale).transpose(1, 2)  # each output column scaled, then linear orientation
        assert weights[name].shape == expected.shape
        assert torch.equal(weights[name].dequantize(), expected)
        assert torch.equal(weights[name].expert(1).dequantize(), expected[1])


def test_vllm_per_tensor_scale_name_and_static_input_scales():
    tensors = {"a.weight": random_fp8(16, 32), "a.weight_scale": torch.tensor(0.5), "a.input_scale": torch.tensor(2.)}
    weights = attach_fp8_scales(tensors, {"quant_method": "fp8", "activation_scheme": "static"})
    assert list(weights) == ["a.weight"] and weights["a.weight"].scheme == "tensor"
    assert torch.equal(weights["a.weight"].dequantize(), tensors["a.weight"].float() * 0.5)


def test_block_folder_loads_fp8_weights(block_folder):
    weight = load_checkpoint(str(block_folder), progress=False).weights[Q_PROJ]
    assert isinstance(weight, Fp8Weight) and weight.block == (128, 128)


@pytest.mark.parametrize("method", ["awq", "gptq", None])
def test_unknown_quant_method_is_named(block_folder, tmp_path, method):
    folder = edited_copy(block_folder, tmp_path, edit_config=lambda c: c["quantization_config"].update(
        quant_method=method))
    with pytest.raises(ModelFormatError, match=f"quant_method {method!r}.*fp8 and fbgemm_fp8"):
        load_checkpoint(str(folder), progress=False)


def test_scale_shape_disagreeing_with_weight_is_named(block_folder, tmp_path):
    folder = edited_copy(block_folder, tmp_path, edit_tensors=lambda t: t.update({Q_PROJ + "_scale_inv":
                                                                                  torch.ones(2, 3)}))
    with pytest.raises(ModelFormatError, match=rf"'{Q_PROJ}_scale_inv' has shape \(2, 3\).*\(256, 256\).*"
                                               r"128x128 blocks needs \(2, 2\)"):
        load_checkpoint(str(folder), progress=False)


def test_block_size_disagreeing_with_scales_is_named(block_folder, tmp_path):
    folder = edited_copy(block_folder, tmp_path, edit_config=lambda c: c["quantization_config"].update(
        weight_block_size=[64, 64]))
    with pytest.raises(ModelFormatError, match=r"_scale_inv' has shape \(2, [23]\).*64x64 blocks needs \(4, [46]\)"):
        load_checkpoint(str(folder), progress=False)


def test_missing_scale_is_named(block_folder, tmp_path):
    folder = edited_copy(block_folder, tmp_path, edit_tensors=lambda t: t.pop(Q_PROJ + "_scale_inv"))
    with pytest.raises(ModelFormatError, match=rf"'{Q_PROJ}' has no scale tensor; expected '{Q_PROJ}_scale_inv'"):
        load_checkpoint(str(folder), progress=False)


def test_fp8_weights_without_quantization_config(block_folder, tmp_path):
    folder = edited_copy(block_folder, tmp_path, edit_config=lambda c: c.pop("quantization_config"))
    with pytest.raises(ModelFormatError, match="stored in FP8, but config.json has no quantization_config"):
        load_checkpoint(str(folder), progress=False)


@pytest.mark.parametrize("block", [[128], [0, 128], "128x128"])
def test_malformed_block_size(block_folder, tmp_path, block):
    folder = edited_copy(block_folder, tmp_path, edit_config=lambda c: c["quantization_config"].update(
        weight_block_size=block))
    with pytest.raises(ModelFormatError, match="weight_block_size must be two positive integers"):
        load_checkpoint(str(folder), progress=False)


def test_stacked_experts_with_wrong_scales_are_named():
    tensors = {"e.down_proj": random_fp8(2, 8, 16), "e.down_proj_scale": torch.rand(2, 8, 1)}
    with pytest.raises(ModelFormatError, match=r"'e.down_proj_scale' has shape \(2, 8, 1\).*\(2, 1, 16\) or "
                                               r"\(2, 16, 1\)"):
        attach_fp8_scales(tensors, {"quant_method": "fbgemm_fp8"})


@pytest.mark.parametrize(("stored", "index", "value", "fault"), [
    (UP_PROJ + "_scale_inv", (2, 1), float("inf"), "NaN or infinite scales: 1, the first at (2, 1)"),
    (UP_PROJ, (130, 4), float("nan"), "NaN FP8 values: 1, the first at (130, 4)"),
])
def test_a_non_finite_scale_or_value_loads_and_fails_the_check(block_folder, tmp_path, stored, index, value, fault):
    def damage(tensors: dict[str, torch.Tensor]) -> None:
        tensors[stored][index] = value

    folder = edited_copy(block_folder, tmp_path, damage)
    checkpoint = load_checkpoint(str(folder), progress=False)
    assert isinstance(checkpoint.weights[UP_PROJ], Fp8Weight)
    with pytest.raises(ModelFormatError) as error:
        check_tensors(checkpoint)
    assert str(error.value) == (f"{folder}: 1 tensor holds NaN or infinity ({UP_PROJ}: {fault}); the checkpoint is "
                                "damaged: download or convert the model again")
