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
