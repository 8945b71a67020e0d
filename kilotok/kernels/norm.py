"""RMSNorm entry points: the plain norm (with a weight, or without one: Llama 4's QK L2 norm) and the
residual add fused before it, each running the PyTorch reference below or the Triton kernel
(kernels/triton/norm.py) by backend. The reference is the numerics every backend matches: fp32 math
whatever the activation dtype, the residual stream rounded to the activation dtype."""

from __future__ import annotations

import torch

from kilotok.kernels.backend import KernelBackend


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    x_fp32 = x.float()
    normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed if weight is None else weight * normed).to(x.dtype)


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    summed = residual + x
    return rms_norm_reference(summed, weight, eps), summed


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
             backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> torch.Tensor:
    """x normalized over its last dimension, times `weight` (fp32) when there is one. `pdl`: the Triton
    kernel may overlap its launch with the previous kernel's tail (kernels/triton/pdl.py)."""
    if backend is KernelBackend.TORCH:
        return rms_norm_reference(x, weight, eps)
    return _triton_ops().rms_norm(x, weight, eps, pdl)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float,
                 backend: KernelBackend = KernelBackend.TORCH, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x), residual + x): a decoder layer's residual add and the norm after it, which
    the Triton kernel does in one pass over the row."""
    if backend is KernelBackend.TORCH:
        return add_rms_norm_reference(x, residual, weight, eps)
    return _triton_ops().add_rms_norm(x, residual, weight, eps, pdl)


def l2_normalize(x: torch.Tensor, eps: float, backend: KernelBackend = KernelBackend.TORCH,
                 pdl: bool = False) -> torch.Tensor:
    """RMSNorm without a weight (Llama 4's QK norm), in fp32."""
    return rms_norm(x, None, eps, backend, pdl)


def _triton_ops():
    # Imported on first use: Triton is an optional extra, needed only when its backend was chosen.
    from kilotok.kernels.triton import fused_ops

    return fused_ops
