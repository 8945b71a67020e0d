"""The scheduler tests run the whole engine on the small random Llama of tests/spec/tiny_engine.py
(transformers' own model, so also the oracle), reused here rather than copied."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).parents[1] / "spec"))


@pytest.fixture
def one_thread():
    """The tiny model's ops take microseconds: OpenMP barriers would cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
