"""Programmatic Dependent Launch is off wherever it cannot run, and its launch option is the one Triton's
CUDA launcher reads; the attention and sampling tests run every kernel with PDL requested, where the
interpreter compiles the grid-dependency calls away."""

from __future__ import annotations

import torch

from kilotok.kernels.triton.pdl import launch_options, pdl_enabled


def test_pdl_is_off_on_the_cpu_under_the_interpreter_and_when_not_asked_for():
    assert not pdl_enabled(True, torch.device("cpu"))
    assert not pdl_enabled(False, torch.device("cpu"))


def test_launch_options_name_the_cuda_launchers_pdl_field():
    from triton.backends.nvidia.compiler import CUDAOptions

    assert launch_options(False) == {}
    assert set(launch_options(True)) <= set(CUDAOptions.__dataclass_fields__)
