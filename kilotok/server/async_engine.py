"""Runs an LLMEngine's loop on a thread apart from the event loop's, so HTTP work never delays a decode
step, and connects it to asyncio.

Every LLMEngine call happens on the engine thread: the loop's own thread (`start`), or the caller's
(`run`). `kilotok serve` runs it on the main thread, where the model was loaded: torch's OpenMP threads
belong to the thread that started them, and a second thread running parallel ops gets a second team, so
on a machine with few cores the teams crowd each other out and OpenMP stops spin-waiting (docs/benchmarks.md
has the decode rates from either thread).

Requests (already validated, see endpoints.py) and aborts reach the loop through a thread-safe queue of
commands; outputs go back to the asyncio queue of the `RequestGroup` they belong to with
`loop.call_soon_threadsafe`. One failing step fails only the requests it ran (with a 500-shaped error) and
the loop keeps going.
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
from kilotok.engine.output import RequestOutput
from kilotok.sequence import Sequence
from kilotok.server.errors import APIError, server_error
from kilotok.server.metrics import RequestProgress, ServerMetrics

logger = logging.getLogger("kilotok.server")

IDLE_POLL_S = 0.5
"""How long an idle engine thread waits on the command queue before checking whether it should stop."""


_CANCELLED = object()


@dataclass(eq=False)
class EngineRequest:
    """One sequence's journey: built on the event loop, owned by the engine thread once submitted."""

    index: int
    seq: Sequence
    deliver: Callable[[int, RequestOutput | APIError | None], None]
    progress: RequestProgress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = RequestProgress(self.seq.arrival_time)


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

    def generate(self, seqs: list[Sequence]) -> RequestGroup:
        """Submit validated sequences that belong together (the choices of one HTTP request) in one
        command, so the engine takes all or none of them. Call on the event loop; iterate the group for
        outputs."""
        loop = asyncio.get_running_loop()
        group = RequestGroup(len(seqs), cancel=lambda: self._commands.put(("abort", engine_requests)))

        def deliver(index: int, item: RequestOutput | APIError | None) -> None:
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
                loop.call_soon_threadsafe(group.put, index, item)

        engine_requests = [EngineRequest(i, seq, deliver) for i, seq in enumerate(seqs)]
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
        self._abort_all(APIError(503, "the server is shutting down; retry on another replica", "server_error"))

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
                self.engine.submit(request.seq)
                self._active[request.seq.seq_id] = request
                added.append(request)
        except Exception as error:  # a request the engine cannot take must not stop the engine thread
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
            if self._active.pop(request.seq.seq_id, None) is None:
                continue  # finished, or the abort overtook its own submission
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
        for request, output in deliveries:
            request.deliver(request.index, output)


class RequestGroup:
    """Iterate `async for index, output in group`; each output is a step's update of sequence `index`.

    Iteration ends when every sequence has finished or the group is cancelled; an APIError from the
    engine thread is raised (and the other sequences cancelled). Use it as `async with` so that leaving
    early, by return, error or task cancellation, frees the sequences at once.
    """

    def __init__(self, size: int, cancel: Callable[[], None]) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._unfinished = set(range(size))
        self._cancel_in_engine = cancel
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        return self._cancelled or not self._unfinished

    def put(self, index: int, item: RequestOutput | APIError | None) -> None:
        """Called on the event loop (via call_soon_threadsafe) with what the engine thread delivers."""
        self._queue.put_nowait((index, item))

    def cancel(self) -> None:
        if self.done:
            return
        self._cancelled = True
        self._cancel_in_engine()
        self._queue.put_nowait((None, _CANCELLED))

    def __aiter__(self) -> RequestGroup:
        return self

    async def __anext__(self) -> tuple[int, RequestOutput]:
        while not self.done:
            index, item = await self._queue.get()
            if item is _CANCELLED:
                break
            if item is None:
                self._unfinished.discard(index)  # aborted in the engine
                continue
            if isinstance(item, APIError):
                self.cancel()
                raise item
            if index not in self._unfinished:
                continue
            if item.finished:
                self._unfinished.discard(index)
            return index, item
        raise StopAsyncIteration

    async def __aenter__(self) -> RequestGroup:
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.cancel()
