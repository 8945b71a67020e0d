"""RMSNorm, computed in fp32 whatever the activation dtype, as the reference does, by the kernel backend
chosen when the model is built (kernels/norm.py); `add_and_norm` also takes the residual add before it,
which the Triton kernel fuses into the norm's one pass over the row. `pdl` lets that kernel overlap its
launch with the previous kernel's tail (kernels/triton/pdl.py)."""

from __future__ import annotations

import torch
from torch import nn

from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.norm import add_rms_norm, rms_norm


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5, backend: KernelBackend = KernelBackend.TORCH,
                 pdl: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.backend = backend
        self.pdl = pdl
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.backend, self.pdl)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(this norm of residual + x, residual + x)."""
        return add_rms_norm(x, residual, self.weight, self.eps, self.backend, self.pdl)
