"""Runs an LLMEngine's loop on a thread apart from the event loop's, so HTTP work never delays a decode
step, and connects it to asyncio.

Every LLMEngine call happens on the engine thread: the loop's own thread (`start`), or the caller's
(`run`). `kilotok serve` runs it on the main thread, where the model was loaded: torch's OpenMP threads
belong to the thread that started them, and a second thread running parallel ops gets a second team, so
on a machine with few cores the teams crowd each other out and OpenMP stops spin-waiting (a decode step
took 1.4x as long from a new thread as from the loading thread on two cores).

Requests and aborts reach the loop through a thread-safe queue of commands; outputs go back to the
asyncio queue of the request group they belong to with `loop.call_soon_threadsafe`. One failing request,
or one failing step, fails only the requests involved (with a 500-shaped error) and the loop keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kilotok.engine.llm_engine import LLMEngine
from kilotok.engine.outputs import RequestOutput
from kilotok.sequence import Sequence
from kilotok.errors import InvalidRequestError
from kilotok.sampling_params import SamplingParams
from kilotok.server.errors import APIError, bad_request, server_error
from kilotok.server.metrics import RequestProgress, ServerMetrics
from kilotok.server.request_group import RequestGroup

logger = logging.getLogger("kilotok.server")

IDLE_POLL_S = 0.5
"""How long an idle engine thread sleeps on the command queue before refreshing the gauges."""


@dataclass(eq=False)
class EngineRequest:
    """One sequence's journey: built on the event loop, owned by the engine thread once submitted."""

    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    deliver: Callable[[int, RequestOutput | APIError | None], None]
    progress: RequestProgress = field(default_factory=lambda: RequestProgress(time.perf_counter()))
    seq: Sequence | None = None


class AsyncEngine:
    def __init__(self, engine: LLMEngine, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._active: dict[int, EngineRequest] = {}
        """seq_id -> request, for requests the engine is running (engine thread only)."""
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._stopped = threading.Event()

    @property
    def is_alive(self) -> bool:
        return self._running.is_set()

    def start(self) -> None:
        """Run the loop on a thread of its own."""
        self._running.set()
        threading.Thread(target=self.run, name="kilotok-engine", daemon=True).start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the loop and wait for it; requests still running are aborted and their clients get a
        503-shaped error."""
        self._stopping.set()
        self._commands.put(("wake", None))
        if self._running.is_set():
            self._stopped.wait(timeout_s)

    def generate(self, requests: list[tuple[list[int], SamplingParams]]) -> RequestGroup:
        """Submit sequences that belong together (the choices of one HTTP request) in one command, so the
        engine admits all or none of them. Call on the event loop; iterate the group for outputs."""
        loop = asyncio.get_running_loop()
        group = RequestGroup(len(requests), cancel=lambda: self._commands.put(("abort", engine_requests)))

        def deliver(index: int, item: RequestOutput | APIError | None) -> None:
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
                loop.call_soon_threadsafe(group.put, index, item)

        engine_requests = [EngineRequest(i, ids, params, deliver) for i, (ids, params) in enumerate(requests)]
        self._commands.put(("add", engine_requests))
        return group

    def run(self) -> None:
        """The engine loop, on the calling thread, until `stop`."""
        self._running.set()
        try:
            self._loop()
        finally:
            self._running.clear()
            self._stopped.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._drain_commands(block=not self.engine.has_unfinished())
            if self.engine.has_unfinished() and not self._stopping.is_set():
                self._step()
            else:
                self._observe_engine()
        self._abort_all(APIError(503, "the server is shutting down; retry on another replica", "server_error"))
        self._observe_engine()

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=IDLE_POLL_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, requests = command
            if kind == "add":
                self._add(requests)
            elif kind == "abort":
                self._abort(requests)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _add(self, requests: list[EngineRequest]) -> None:
        added: list[EngineRequest] = []
        try:
            for request in requests:
                request.seq = self.engine.add_request(request.prompt_token_ids, request.params)
                self._active[request.seq.seq_id] = request
                added.append(request)
        except Exception as error:  # a bad request must not stop the engine thread
            if isinstance(error, InvalidRequestError):
                failure = bad_request(str(error))
            else:
                logger.exception("could not add a request to the engine")
                failure = server_error(f"the engine could not take the request: {type(error).__name__}: {error}")
            self._abort(added, failure, reason="error")
            for request in requests[len(added):]:
                request.deliver(request.index, failure)

    def _abort(self, requests: list[EngineRequest], notice: APIError | None = None, reason: str = "abort") -> None:
        """Free the sequences of `requests` that are still running; their group gets `notice` (None means
        the client went away, an APIError that the server gave up on them). `reason` labels the metrics:
        "abort" for cancellations and shutdown, "error" for failures."""
        for request in requests:
            if request.seq is None or self._active.pop(request.seq.seq_id, None) is None:
                continue  # finished or never admitted
            try:
                self.engine.abort(request.seq)
            except Exception:  # the sequence is dropped from the server's books either way
                logger.exception("aborting sequence %d failed", request.seq.seq_id)
            self.metrics.finish(request.progress, reason, time.perf_counter())
            request.deliver(request.index, notice)

    def _abort_all(self, notice: APIError, reason: str = "abort") -> None:
        self._abort(list(self._active.values()), notice, reason)

    def _step(self) -> None:
        try:
            updates = self.engine.step()
        except Exception as error:  # fail the batch, keep serving
            logger.exception("an engine step failed; failing the requests it was running")
            self._abort_all(server_error(f"the engine failed while running this request: "
                                         f"{type(error).__name__}: {error}"), reason="error")
            self._observe_engine()
            return
        deliveries = []
        for seq, output in updates:
            request = self._active.get(seq.seq_id)
            if request is None:
                continue
            if output.finished:
                del self._active[seq.seq_id]
            self.metrics.observe_output(request.progress, seq, output)
            deliveries.append((request, output))
        # Gauges first, so a client that has its answer never scrapes the step before it.
        self._observe_engine()
        for request, output in deliveries:
            request.deliver(request.index, output)

    def _observe_engine(self) -> None:
        try:
            self.metrics.observe_engine(self.engine)
        except Exception:  # metrics must never stop serving
            logger.exception("updating the engine gauges failed")
