"""The SwiGLU activation on a fused gate/up projection's output, [..., 2I] -> [..., I]: the PyTorch
reference or the Triton kernel (kernels/triton/activation.py) by backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kilotok.errors import InvalidRequestError
from kilotok.kernels.backend import KernelBackend


def swiglu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu(gate_up: torch.Tensor, backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> torch.Tensor:
    """silu(gate) * up, with gate the first half of the last dimension and up the second. `pdl`: the Triton
    kernel may overlap its launch with the previous kernel's tail (kernels/triton/pdl.py)."""
    if gate_up.shape[-1] % 2:
        raise InvalidRequestError(f"swiglu needs an even last dimension (gate and up), got {gate_up.shape[-1]}")
    if backend is KernelBackend.TORCH:
        return swiglu_reference(gate_up)
    from kilotok.kernels.triton import fused_ops  # Triton is an optional extra: imported on first use

    return fused_ops.swiglu(gate_up, pdl)
