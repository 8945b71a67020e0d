"""`kilotok serve --tensor-parallel-size 3` answers the official openai client with the text one process
generates, and stops its ranks when it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kilotok.llm import LLM
from kilotok.sampling_params import SamplingParams
from tests.parallel.tiny_models import llama_folder

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
PROMPT = "t5 t6 t7 t8 t5 t6"
START_TIMEOUT_S = 240


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("kilotok serve did not become healthy")


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in found]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_serve_at_tensor_parallel_3_answers_with_the_single_process_text(tmp_path):
    folder = llama_folder(tmp_path / "llama")
    with LLM(str(folder), dtype="fp32", compile=False, progress=False) as llm:
        expected = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0].text
    assert expected.strip()
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    server = subprocess.Popen([sys.executable, "-m", "kilotok.cli", "serve", "--model", str(folder), "--port",
                               str(port), "--dtype", "fp32", "--no-compile", "--tensor-parallel-size", "3",
                               "--served-model-name", "tiny"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", server)
        ranks = _children(server.pid)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        completion = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0,
                                               extra_body={"ignore_eos": True})
        assert completion.choices[0].text == expected
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(ranks) >= 2 and not any(_alive(pid) for pid in ranks)
    finally:
        server.kill()
        server.wait(timeout=30)
