"""Which implementation runs behind each kernel entry point (kernels/*.py): the PyTorch reference, or the
Triton kernels on a CUDA device.

The choice is made once, where the model is built (`--backend`, EngineConfig.backend), and handed to the
layers that call kernels; each entry point takes it as an argument, so the model code never looks at which
implementation runs and `torch.compile` sees a constant. The CPU keeps its own path (the reference ops and
kilotok's C++ low-bit linear) whatever is asked for, except that tests may run the Triton kernels on CPU
tensors under Triton's interpreter (TRITON_INTERPRET=1), where they check the kernels against the reference.
"""

from __future__ import annotations

import os
from enum import StrEnum

import torch

from kilotok.errors import InvalidRequestError


class KernelBackend(StrEnum):
    TORCH = "torch"
    TRITON = "triton"


BACKEND_CHOICES = ("auto", "torch", "triton")


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (tests, not serving)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(requested: str | KernelBackend, device: torch.device | str) -> KernelBackend:
    """`auto`: Triton on a CUDA device where Triton is installed, else the torch reference. An explicit
    `triton` needs Triton and either a CUDA device or the interpreter."""
    requested = str(requested.value if isinstance(requested, KernelBackend) else requested)
    if requested not in BACKEND_CHOICES:
        raise InvalidRequestError(f"unknown kernel backend {requested!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    on_cuda = torch.device(device).type == "cuda"
    if requested == "auto":
        return KernelBackend.TRITON if on_cuda and triton_importable() else KernelBackend.TORCH
    if requested == "triton":
        if not triton_importable():
            raise InvalidRequestError("--backend triton needs the triton package: pip install 'kilotok[triton]'")
        if not (on_cuda or interpreting()):
            raise InvalidRequestError("--backend triton runs on a CUDA device (or on the CPU under "
                                      "TRITON_INTERPRET=1, for tests); use --backend torch on the CPU")
    return KernelBackend(requested)
