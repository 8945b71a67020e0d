"""Fixtures shared by the speculative-decoding tests on the tiny random engine."""

from __future__ import annotations

import pytest

from tests.speculative.tiny_engine import random_reference


@pytest.fixture(scope="module")
def reference():
    return random_reference()
