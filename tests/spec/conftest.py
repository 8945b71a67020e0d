"""Fixtures shared by the speculative-decoding tests on the tiny random engine."""

from __future__ import annotations

import pytest
import torch
from tiny_engine import random_reference


@pytest.fixture
def one_thread():
    """The tiny model's ops are microseconds long: OpenMP barriers across threads cost more than they
    save, over ten times more on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference():
    return random_reference()
