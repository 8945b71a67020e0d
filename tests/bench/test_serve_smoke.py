"""`kilotok bench serve` end to end: it starts the real `kilotok serve` on the default model, measures two
concurrency levels, writes its files and stops the server again."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kilotok.bench.serve_server import is_healthy

pytestmark = pytest.mark.slow

KILOTOK = [sys.executable, "-m", "kilotok.cli.main"]


def _serve_flags() -> str:
    """--no-compile when the server offers it: the compile warm-up would triple this test's time."""
    help_text = subprocess.run([*KILOTOK, "serve", "--help"], capture_output=True, text=True, timeout=300).stdout
    return "--no-compile" if "--no-compile" in help_text else ""


@pytest.mark.skipif(importlib.util.find_spec("kilotok.cli.serve") is None,
                    reason="kilotok.cli.serve does not exist yet: `kilotok serve` is being written")
def test_bench_serve_runs_against_the_real_server(tmp_path: Path):
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    command = [*KILOTOK, "bench", "serve", "--concurrency", "1,2", "--num-prompts", "2", "--max-tokens", "8",
               f"--server-args={_serve_flags()}", "--out", str(out), "--plot", str(plot)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (configuration,) = json.loads(out.read_text())["configurations"]
    levels = configuration["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        assert level["num_requests"] == 2 and level["num_failed"] == 0
        assert 2 <= level["output_tokens"] <= 2 * 8
        assert level["median_ttft_s"] > 0 and level["total_output_tokens_per_s"] > 0
        assert level["acceptance_length"] == 1.0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "kilotok bench serve" in finished.stdout
    port = configuration["config"]["server_command"][configuration["config"]["server_command"].index("--port") + 1]
    assert not is_healthy(f"http://127.0.0.1:{port}", timeout_s=2)
