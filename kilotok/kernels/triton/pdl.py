"""Programmatic Dependent Launch: on Hopper and newer GPUs a kernel launched with PDL may start while the
previous kernel in the stream is still finishing, so its prologue (index math, loading its own inputs)
overlaps the previous kernel's tail.

A kernel that takes part calls `wait_for_producer` before it reads anything the previous kernel wrote,
and `release_dependents` once its own reads are issued, letting the next kernel start early. Both are
no-ops unless the kernel is compiled with USE_PDL, which `pdl_enabled` turns off under the interpreter
(which has no grid dependencies), on GPUs older than Hopper, and when the user asked for no PDL.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import cuda as tl_cuda

from kilotok.kernels.backend import interpreting

PDL_MIN_CAPABILITY = (9, 0)


@functools.cache
def _device_has_pdl(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= PDL_MIN_CAPABILITY


def pdl_enabled(requested: bool, device: torch.device) -> bool:
    """Whether kernels on `device` run with PDL: asked for, on a CUDA device of compute capability 9.0+."""
    if not requested or interpreting() or device.type != "cuda":
        return False
    return _device_has_pdl(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(enabled: bool) -> dict:
    """Keyword arguments for a kernel launch (`kernel[grid](..., **launch_options(enabled))`)."""
    return {"launch_pdl": True} if enabled else {}


@triton.jit
def wait_for_producer(USE_PDL: tl.constexpr):
    if USE_PDL:
        tl_cuda.gdc_wait()


@triton.jit
def release_dependents(USE_PDL: tl.constexpr):
    if USE_PDL:
        tl_cuda.gdc_launch_dependents()
