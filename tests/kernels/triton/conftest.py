"""The Triton kernels run here on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton).

The interpreter truncates fp32 to bf16 where the GPU rounds to nearest even, so bf16 results may differ from
the reference by an ulp per rounding (tolerances.py); fp32 comparisons stay tight."""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="the Triton kernel tests need the triton package (pip install triton)")
