"""Triton kernels run here on CPU tensors through Triton's interpreter; the variable must be set before the
kernels' modules are first imported (they are imported lazily, on first use)."""

from __future__ import annotations

import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
