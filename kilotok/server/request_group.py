"""The event-loop side of one HTTP request: the outputs of its sequences (one per choice) as they arrive
from the engine thread, and a way to cancel them all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kilotok.engine.outputs import RequestOutput
from kilotok.server.errors import APIError

_CANCELLED = object()


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
