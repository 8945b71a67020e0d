"""The kilotok files one streamed chat request runs through, from the route to the sampled token and back.

Serves the default model in-process, sends one chat request to warm everything up, then lists, in the
order they are first entered, the kilotok source files whose functions run (on any thread) while a
second request is served. The decode step runs eagerly here: compiled, the model's forward is one graph
that Python's profiler does not see into.

usage: python scripts/trace_request.py
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from fastapi.testclient import TestClient

import kilotok
from kilotok import LLM
from kilotok.server.app import build_app

ROOT = str(Path(kilotok.__file__).parent) + "/"
BODY = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Name three rivers."}], "max_tokens": 8,
        "stream": True}


def main() -> int:
    seen: dict[str, None] = {}
    recording = threading.Event()

    def profile(frame, event, arg):
        if event == "call" and recording.is_set() and frame.f_code.co_filename.startswith(ROOT):
            seen.setdefault(frame.f_code.co_filename.removeprefix(ROOT), None)

    llm = LLM("smollm2-135m", progress=False, compile=False)
    threading.setprofile(profile)
    sys.setprofile(profile)
    with TestClient(build_app(llm.engine, "smollm2-135m")) as client:
        client.post("/v1/chat/completions", json=BODY).read()
        recording.set()
        client.post("/v1/chat/completions", json=BODY).read()
        recording.clear()
    sys.setprofile(None)
    for index, name in enumerate(seen, 1):
        print(f"{index:2d} kilotok/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
