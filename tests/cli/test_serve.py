"""`kilotok serve` as a process, started the way `kilotok bench serve` starts it: poll /health, stream a
chat with usage, then SIGTERM mid-stream: the running answer still completes and the process shuts down
cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow

SERVED_NAME = "tiny-chat"
API_KEY = "process-key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    raise AssertionError("the server never became healthy")


def open_chat_stream(url: str, max_tokens: int):
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "Count to fifty."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {API_KEY}"})
    return urllib.request.urlopen(request, timeout=300)


STABLE_FLAGS = ["--model", "--host", "--port", "--dtype", "--spec", "--draft", "--max-num-seqs", "--kv-cache-gb",
                "--kv-cache-blocks", "--api-key", "--served-model-name", "--no-compile"]
"""The flags `kilotok bench serve` starts the server with; renaming one breaks it."""


def test_serve_help_lists_the_stable_flags():
    result = subprocess.run([sys.executable, "-m", "kilotok.cli.main", "serve", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert [flag for flag in STABLE_FLAGS if flag not in result.stdout] == []


def test_serve_process_answers_then_drains_on_sigterm():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "kilotok.cli.main", "serve", "--port", str(port), "--no-compile",
               "--kv-cache-blocks", "256", "--max-num-seqs", "4", "--api-key", API_KEY,
               "--served-model-name", SERVED_NAME]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_for_health(url, process)
        with open_chat_stream(url, max_tokens=24) as stream:
            first = stream.readline()
            assert first.startswith(b"data: ")
            process.send_signal(signal.SIGTERM)
            events = [first.decode().strip()] + [line for line in stream.read().decode().split("\n\n") if line]
        assert events[-1] == "data: [DONE]"
        usage = json.loads(events[-2][len("data: "):])["usage"]
        assert usage["completion_tokens"] == 24
        # uvicorn re-raises the SIGTERM it caught once shutdown is done, so the exit is "killed by SIGTERM";
        # its log proves the app's shutdown (which stops the engine thread) ran to the end first.
        assert process.wait(timeout=120) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
