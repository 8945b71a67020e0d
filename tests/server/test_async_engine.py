"""The engine thread's fault isolation, with a scripted stand-in for LLMEngine (no model): a request the
engine fails to take, or a step that raises, fails only the requests involved, and the thread keeps
serving."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import SimpleNamespace

import pytest

from kilotok.engine.output import RequestOutput
from kilotok.sampling_params import SamplingParams
from kilotok.sequence import Sequence, SequenceStatus, SpecStats
from kilotok.server.async_engine import AsyncEngine
from kilotok.server.errors import APIError
from kilotok.server.metrics import ServerMetrics

POISON = 13
"""A prompt token that makes the scripted engine's step raise."""
REFUSED = 7
"""A prompt token that makes the scripted engine's submit raise."""


class ScriptedEngine:
    """Emits token 1 per step per sequence until max_tokens; raises on a step that runs POISON."""

    def __init__(self) -> None:
        self.scheduler = SimpleNamespace(running=deque(), waiting=deque(), num_preemptions=0)
        self.block_manager = SimpleNamespace(num_usable_blocks=8, num_free_blocks=8, prefix_query_tokens=0,
                                             prefix_hit_tokens=0)
        self.spec_stats = SpecStats()
        self.aborted: list[int] = []

    def submit(self, seq: Sequence) -> None:
        if REFUSED in seq.prompt_token_ids:
            raise RuntimeError("token 7 is not welcome here")
        self.scheduler.running.append(seq)

    def abort(self, seq: Sequence) -> None:
        self.aborted.append(seq.seq_id)
        self.scheduler.running.remove(seq)

    def has_unfinished(self) -> bool:
        return bool(self.scheduler.running)

    def step(self) -> list[tuple[Sequence, RequestOutput]]:
        if any(POISON in seq.prompt_token_ids for seq in self.scheduler.running):
            raise RuntimeError("a kernel blew up")
        updates = []
        for seq in list(self.scheduler.running):
            seq.append_token(1, time.perf_counter())
            if seq.num_output_tokens >= seq.params.max_tokens:
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, "length"
                self.scheduler.running.remove(seq)
            updates.append((seq, RequestOutput(seq.seq_id, seq.prompt_token_ids, "x" * seq.num_output_tokens,
                                               seq.output_token_ids, seq.finish_reason, 0.0, 0.0, 0.0, "x")))
        return updates


async def run_to_end(engine: AsyncEngine, prompt: list[int], max_tokens: int = 3) -> list[RequestOutput]:
    outputs = []
    async with engine.generate([Sequence(prompt, SamplingParams(max_tokens=max_tokens))]) as group:
        async for _, output in group:
            outputs.append(output)
    return outputs


def finished_count(engine: AsyncEngine, reason: str) -> float:
    labels = {"model_name": "scripted", "engine": "0", "finished_reason": reason}
    return engine.metrics.registry.get_sample_value("vllm:request_success_total", labels)


@pytest.fixture
def engine():
    scripted = ScriptedEngine()
    async_engine = AsyncEngine(scripted, ServerMetrics("scripted", scripted))
    async_engine.start()
    yield async_engine
    async_engine.stop(timeout_s=10)
    assert not async_engine.is_alive


def test_a_request_runs_to_its_finish(engine):
    outputs = asyncio.run(run_to_end(engine, [1, 2]))
    assert [o.num_output_tokens for o in outputs] == [1, 2, 3]
    assert outputs[-1].finish_reason == "length"
    assert finished_count(engine, "length") == 1


def test_a_request_the_engine_cannot_take_is_a_500_and_the_thread_keeps_serving(engine):
    with pytest.raises(APIError) as caught:
        asyncio.run(run_to_end(engine, [REFUSED]))
    assert caught.value.status == 500 and "token 7" in caught.value.message
    assert asyncio.run(run_to_end(engine, [1]))[-1].finished
    assert engine.is_alive


def test_a_failing_step_fails_its_requests_with_a_500_and_the_thread_keeps_serving(engine):
    with pytest.raises(APIError) as caught:
        asyncio.run(run_to_end(engine, [POISON]))
    assert caught.value.status == 500 and "a kernel blew up" in caught.value.message
    assert engine.engine.aborted, "the failed sequence was not aborted"
    assert finished_count(engine, "error") == 1
    assert asyncio.run(run_to_end(engine, [1]))[-1].finished
    assert engine.is_alive


def test_cancelling_a_group_aborts_its_sequences_in_the_engine(engine):
    async def start_then_cancel() -> None:
        async with engine.generate([Sequence([1], SamplingParams(max_tokens=10_000))]) as group:
            async for _ in group:
                group.cancel()

    asyncio.run(start_then_cancel())
    deadline = time.monotonic() + 10
    while finished_count(engine, "abort") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # the metrics are counted on the engine thread right after the abort
    assert finished_count(engine, "abort") == 1
    assert len(engine.engine.aborted) == 1
    assert not engine.engine.has_unfinished()
