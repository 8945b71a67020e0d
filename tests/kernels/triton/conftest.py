"""The Triton kernels run here on CPU tensors through Triton's interpreter. The variable must be set before
any kernel module is imported: `@triton.jit` chooses the interpreter when it decorates.

The interpreter truncates fp32 to bf16 where the GPU rounds to nearest even, so bf16 results may differ from
the reference by an ulp per rounding (tolerances.py); fp32 comparisons stay tight."""

from __future__ import annotations

import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="the Triton kernel tests need the triton package (pip install triton)")
