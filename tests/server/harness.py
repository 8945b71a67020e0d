"""Runs a real kilotok app with uvicorn on a loopback port in a background thread, for tests that talk to
it with the official `openai` client or raw HTTP."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from prometheus_client.parser import text_string_to_metric_families

MODEL = "smollm2-135m"
API_KEY = "test-key"
KV_CACHE_BLOCKS = 512
METRIC_LABELS = {"model_name": MODEL, "engine": "0"}
ENGINE_SETTINGS = {"compile": False, "progress": False}
"""The default weights (int4): what users serve. compile=False keeps start-up fast."""


@dataclass
class RunningServer:
    base_url: str
    """Ends in /v1, as the openai client wants it."""
    root_url: str
    app: object
    server: uvicorn.Server

    @property
    def engine(self):
        """The served LLMEngine; tests only read counters from it (the engine thread owns it)."""
        return self.app.state.kilotok.engine

    def client(self, api_key: str = API_KEY, **settings):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **{"max_retries": 0, "timeout": 300, **settings})

    def wait_for_idle_blocks(self, expected_free: int, timeout_s: float = 30.0) -> int:
        """Polls the engine's free-block count until it is back to `expected_free` (or time runs out)."""
        deadline = time.monotonic() + timeout_s
        free = self.engine.block_manager.num_free_blocks
        while free != expected_free and time.monotonic() < deadline:
            time.sleep(0.05)
            free = self.engine.block_manager.num_free_blocks
        return free


def start_uvicorn(app, ready_timeout_s: float = 60.0) -> tuple[uvicorn.Server, threading.Thread, int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


@contextmanager
def running_server(**engine_settings) -> Iterator[RunningServer]:
    """Load the default model with `engine_settings`, serve it on a free loopback port, stop on exit."""
    from kilotok.llm import LLM
    from kilotok.server.app import build_app

    llm = LLM(MODEL, kv_cache_blocks=KV_CACHE_BLOCKS, **{**ENGINE_SETTINGS, **engine_settings})
    app = build_app(llm.engine, MODEL, api_key=API_KEY)
    server, thread, port = start_uvicorn(app)
    root = f"http://127.0.0.1:{port}"
    try:
        yield RunningServer(base_url=f"{root}/v1", root_url=root, app=app, server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def scrape_metrics(served: RunningServer) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, and the families' types under ("TYPE", name)."""
    with urllib.request.urlopen(f"{served.root_url}/metrics", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        samples[("TYPE", family.name)] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_value(samples: dict, name: str, **extra_labels) -> float:
    return samples[(name, tuple(sorted({**METRIC_LABELS, **extra_labels}.items())))]
