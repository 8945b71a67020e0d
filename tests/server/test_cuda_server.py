"""The OpenAI-compatible server on a CUDA device with each kernel backend, through the official client.
Marked `gpu`: run by scripts/gpu/test_gpu.sh."""

from __future__ import annotations

import pytest

from tests.server.harness import MODEL, running_server

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["torch", "triton"])
def served(request):
    with running_server(device="cuda", backend=request.param) as server:
        assert server.engine.runner.device.type == "cuda"
        yield server


def test_completions_and_chat_on_cuda(served):
    client = served.client()
    greedy = {"model": MODEL, "max_tokens": 24, "temperature": 0}
    first = client.completions.create(prompt="The capital of France is", **greedy)
    assert first.choices[0].text and first.usage.completion_tokens > 0
    again = client.completions.create(prompt="The capital of France is", **greedy)
    assert again.choices[0].text == first.choices[0].text
    messages = [{"role": "user", "content": "Name three rivers."}]
    whole = client.chat.completions.create(messages=messages, **greedy).choices[0].message.content
    chunks = client.chat.completions.create(messages=messages, stream=True, **greedy)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    seeded = {"model": MODEL, "max_tokens": 24, "temperature": 0.9, "seed": 11}
    texts = {client.completions.create(prompt="Once upon a time", **seeded).choices[0].text for _ in range(2)}
    assert len(texts) == 1
