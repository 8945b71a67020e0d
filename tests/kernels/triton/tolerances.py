"""How close a kernel's output must be to the reference's, by dtype. In bf16 each rounding may be off by an
ulp (2**-8 to 2**-7 of the value) under the interpreter, which truncates where the GPU rounds (conftest.py),
and a kernel may round twice, as the reference does."""

from __future__ import annotations

import torch

TOLERANCE = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.bfloat16: dict(atol=1e-5, rtol=2**-6)}
