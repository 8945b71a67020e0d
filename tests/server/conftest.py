"""One real kilotok server for the server tests, started once per session (see harness.py)."""

from __future__ import annotations

import pytest

from tests.server.harness import running_server


@pytest.fixture(scope="session")
def served():
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def client(served):
    return served.client()
