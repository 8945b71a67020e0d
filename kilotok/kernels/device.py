"""Which device a model runs on: `--device {auto,cpu,cuda}` (EngineConfig.device), resolved once.

`auto` is CUDA where torch sees a GPU, else the CPU. An explicit `cuda` (or `cuda:N`) on a machine without
one is refused with a message that says why, rather than failing later inside the first tensor copy.
"""

from __future__ import annotations

import torch

from kilotok.errors import InvalidRequestError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""What `--device` accepts; EngineConfig.device also takes `cuda:N`."""


def resolve_device(requested: str | torch.device) -> torch.device:
    """The torch device `requested` names; raises InvalidRequestError for an unknown name or a CUDA device
    this machine does not have."""
    requested = str(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = requested.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise InvalidRequestError(f"unknown device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)} "
                                  "(or cuda:N)", param="device")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequestError(
                f"device {requested!r} needs a CUDA GPU, and torch sees none here (a CPU-only torch build, or "
                "no GPU visible); use --device cpu, or auto to take a GPU only where there is one",
                param="device")
        if index and int(index) >= torch.cuda.device_count():
            raise InvalidRequestError(f"device {requested!r}: this machine has {torch.cuda.device_count()} "
                                      "CUDA device(s)", param="device")
    return torch.device(requested)
