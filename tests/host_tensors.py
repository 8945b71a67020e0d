"""Where code puts its tensors, checked on a CPU-only machine: run it on the `meta` device (tensors with
shapes and no data, on a device other than the host) under `HostTensors`, which records every op that
makes or reads a host tensor. torch itself refuses most host/device mixes; the audit also catches those it
lets through (a 0-d host tensor in device arithmetic, a host index tensor, a host tensor never combined).

(FakeTensorMode can make 'cuda' tensors without a GPU, but indexing them needs a CUDA build.) Code under
test must not read values (`.tolist()`, `int(t)`): meta tensors have none."""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("meta")
"""The stand-in for an accelerator."""


class HostTensors(TorchDispatchMode):
    """Records every op that makes or reads a host tensor, except copies of Python data to the device
    (`torch.tensor(values, device=...)` builds on the host, then copies: the one way data gets there)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.prim.device.default):
            return out
        if func is torch.ops.aten._to_copy.default and out.device.type != "cpu":
            return out
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in pytree.tree_leaves((args, kwargs, out))):
            self.ops.append(str(func))
        return out
