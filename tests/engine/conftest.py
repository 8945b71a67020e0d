"""The scheduler tests run the whole engine on the small random Llama of tests/spec/tiny_engine.py
(transformers' own model, so also the oracle), reused here rather than copied."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parents[1] / "spec"))
