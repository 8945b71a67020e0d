"""What `--dtype` means: `auto` picks the format a checkpoint's stored weights run best in, names resolve to
formats, and unknown names are refused with the choices listed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from kilotok.errors import InvalidRequestError
from kilotok.loader.tensor import QuantizedTensor
from kilotok.quant.formats import DTYPE_CHOICES, FORMATS, resolve_weight_format, weight_format
from kilotok.quant.fp8 import quantize_fp8


def gguf_weight(qtype: GGMLQuantizationType) -> QuantizedTensor:
    return QuantizedTensor(qtype, quantize(np.ones((4, 32), np.float32), qtype), (4, 32))


@pytest.mark.parametrize("weights,expected", [
    ({"a": torch.ones(4, 4), "b": quantize_fp8(torch.ones(4, 4), "tensor")}, "fp8-stored"),
    ({"a": gguf_weight(GGMLQuantizationType.Q8_0), "b": gguf_weight(GGMLQuantizationType.Q4_1)}, "int4"),
    ({"a": gguf_weight(GGMLQuantizationType.Q4_0)}, "int4"),
    ({"a": gguf_weight(GGMLQuantizationType.Q8_0), "b": torch.ones(4)}, "bf16"),
    ({"a": torch.ones(4, 4, dtype=torch.float16)}, "bf16"),
], ids=["fp8", "q4_1", "q4_0", "q8_0", "float"])
def test_auto_follows_the_stored_weights(weights, expected):
    assert resolve_weight_format("auto", weights) is FORMATS[expected]


def test_names_resolve_to_their_format_whatever_is_stored():
    stored = {"a": quantize_fp8(torch.ones(4, 4), "tensor")}
    for name in DTYPE_CHOICES[1:]:
        assert resolve_weight_format(name, stored).name == name
        assert weight_format(FORMATS[name]) is FORMATS[name]


def test_dtype_choices_and_the_formats_they_leave_unquantized():
    assert DTYPE_CHOICES[0] == "auto" and "fp8-stored" not in DTYPE_CHOICES
    assert set(DTYPE_CHOICES[1:]) == set(FORMATS) - {"fp8-stored"}
    assert FORMATS["int4"].float_format is FORMATS["bf16"]
    assert FORMATS["fp32"].float_format is FORMATS["fp32"]
    assert FORMATS["fp8-block"].float_format is FORMATS["bf16"]


def test_unknown_name_lists_the_choices():
    with pytest.raises(InvalidRequestError, match="unknown dtype 'int3'; choose one of auto, .*int4") as error:
        weight_format("int3")
    assert error.value.param == "dtype"


def test_cuda_runs_only_float_and_fp8_formats_and_auto_takes_gguf_int4_as_bf16():
    q4 = {"a": gguf_weight(GGMLQuantizationType.Q4_1)}
    assert resolve_weight_format("auto", q4, "cuda") is FORMATS["bf16"]
    assert resolve_weight_format("auto", q4, "cpu") is FORMATS["int4"]
    fp8 = {"a": quantize_fp8(torch.ones(4, 4), "tensor")}
    assert resolve_weight_format("auto", fp8, "cuda") is FORMATS["fp8-stored"]
    assert {name for name in DTYPE_CHOICES[1:] if FORMATS[name].runs_on("cuda")} == set(DTYPE_CHOICES[1:]) - {
        "int8", "int4"}
    assert all(FORMATS[name].runs_on("cpu") for name in DTYPE_CHOICES[1:])
    for name in ("int4", "int8"):
        with pytest.raises(InvalidRequestError, match=rf"dtype '{name}' runs on the CPU only .* on cuda choose one "
                                                      r"of auto, fp32, bf16, fp16, fp8, fp8-tensor, fp8-channel, "
                                                      r"fp8-block, or --device cpu") as error:
            resolve_weight_format(name, q4, torch.device("cuda", 1))
        assert error.value.param == "dtype"
