"""kilotok: fast single-stream LLM inference.

The public names load lazily, so `import kilotok.<submodule>` stays cheap (no model code, no compiler).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kilotok.engine.output import RequestOutput
    from kilotok.llm import LLM
    from kilotok.sampling_params import SamplingParams

__all__ = ["LLM", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"

_PUBLIC = {
    "LLM": "kilotok.llm",
    "RequestOutput": "kilotok.engine.output",
    "SamplingParams": "kilotok.sampling_params",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kilotok' has no attribute {name!r}")
