"""`load_model`: a damaged weight loads unless asked to check, and with `check_tensors` fails naming it."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file, save_file

from kilotok.errors import ModelFormatError
from kilotok.models.builder import load_model
from tests.quant.tiny_hf import save_tiny_llama

DAMAGED = "model.layers.1.mlp.down_proj.weight"


def test_a_nan_in_safetensors_is_found_only_when_checking(tmp_path):
    save_tiny_llama(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors[DAMAGED][3, 5] = float("nan")
    save_file(tensors, tmp_path / "model.safetensors")
    assert load_model(str(tmp_path), "fp32", progress=False).model is not None
    with pytest.raises(ModelFormatError, match=rf"^{tmp_path}: 1 tensor holds NaN or infinity \({DAMAGED}: NaN or "
                                               r"infinite values: 1, the first at \(3, 5\)\); the checkpoint is "
                                               "damaged: download or convert the model again$"):
        load_model(str(tmp_path), "fp32", progress=False, check_tensors=True)


@pytest.mark.parametrize("dtype", ["fp32", "fp8-block"])
def test_build_model_moves_every_weight_and_table_onto_the_device(tmp_path, dtype):
    """Built on the host, moved layer by layer: nothing the forward reads may stay behind. The meta device
    stands in for a GPU here (a tensor left on the CPU would show as one)."""
    import torch

    from kilotok.models.builder import build_model
    from kilotok.models.registry import load_checkpoint

    save_tiny_llama(tmp_path)
    model = build_model(load_checkpoint(str(tmp_path), progress=False), dtype, progress=False, device="meta")
    held = [*model.parameters(), *model.buffers()]
    held += [value for module in model.modules() for value in vars(module).values()
             if isinstance(value, torch.Tensor) and value.numel()]
    assert len(held) > 15 and {t.device.type for t in held} == {"meta"}


def test_load_model_refuses_a_cpu_only_dtype_on_cuda_before_reading_weights(tmp_path, monkeypatch):
    from kilotok.errors import InvalidRequestError

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(InvalidRequestError, match="dtype 'int8' runs on the CPU only"):
        load_model(str(tmp_path / "not-read"), "int8", progress=False, device="cuda")
