"""The server's OpenAPI document is its contract: schemathesis, every check on, sends schema-valid and
schema-violating requests to all five routes of a real server and judges each answer by the document
(status codes, content types, bodies, headers, 405 with Allow, the API key). Afterwards the server must be
idle: nothing running or waiting, every KV block free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.harness import API_KEY, metric_value, running_server, scrape_metrics
from tests.server.schemathesis_hooks import MAX_MODEL_LEN

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 15
RUN_TIMEOUT_S = 600


def test_the_server_keeps_the_contract_of_its_openapi_document():
    with running_server(max_model_len=MAX_MODEL_LEN) as served:
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color", "run",
                   f"{served.root_url}/openapi.json", "--seed", str(SEED),
                   "--header", f"Authorization: Bearer {API_KEY}"]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert run.returncode == 0, f"{run.stdout[-30000:]}\n{run.stderr[-5000:]}"

        usable = served.engine.block_manager.num_usable_blocks
        assert served.wait_for_idle_blocks(usable) == usable
        samples = scrape_metrics(served)
        assert metric_value(samples, "vllm:num_requests_running") == 0
        assert metric_value(samples, "vllm:num_requests_waiting") == 0
        assert metric_value(samples, "vllm:kv_cache_usage_perc") == 0
