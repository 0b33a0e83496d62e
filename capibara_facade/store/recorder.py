"""Writing stored completions off the client's path: a bounded queue and one task that drains it.

`submit()` is called once the answer has been sent (by `Gateway.account`) and never waits: when the queue
is full the completion is dropped. A completion that cannot be stored (the store is down, the answer was
not one) is logged and counted; the client never hears of it, having had its answer already. Expired
completions are purged once an hour by the same task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..observe.record import Outcome, RequestRecord
from ..observe.usage import Usage
from . import Store
from .capture import Capture, NotStorable

__all__ = ["Recorder"]

log = logging.getLogger(__name__)

_PURGE_EVERY_SECONDS = 3600.0
_DRAIN_SECONDS = 5.0  # at shutdown, what is queued gets this long to be written


class Recorder:
    def __init__(self, store: Store, queue_size: int, on_failure: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._queue: asyncio.Queue[Capture] = asyncio.Queue(queue_size)
        self._on_failure = on_failure  # told the reason (dropped, unstorable, store_error) of each loss
        self._task: asyncio.Task[None] | None = None
        self._purged_at = 0.0

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def submit(self, capture: Capture, record: RequestRecord) -> None:
        """Queue a finished request's completion, if it completed."""
        if record.outcome != Outcome.COMPLETED or record.status != 200:
            return
        if record.prompt_tokens is not None or record.completion_tokens is not None:
            capture.usage = Usage(record.prompt_tokens or 0, record.completion_tokens or 0)
        try:
            self._queue.put_nowait(capture)
        except asyncio.QueueFull:
            self._failed("dropped", "the queue is full")

    async def _run(self) -> None:
        while True:
            capture = await self._queue.get()
            try:
                await self._write(capture)
            finally:
                self._queue.task_done()

    async def _write(self, capture: Capture) -> None:
        try:
            completion = capture.completed()
        except NotStorable as exc:
            self._failed("unstorable", str(exc))
            return
        except Exception as exc:  # an upstream's odd JSON (the relay passed it on untouched) must not end the task
            self._failed("unstorable", f"{type(exc).__name__}: {exc}")
            return
        try:
            await self.store.save(completion)
            if time.monotonic() - self._purged_at > _PURGE_EVERY_SECONDS:
                self._purged_at = time.monotonic()
                if purged := await self.store.purge_expired():
                    log.info("stored completions: %d expired, deleted", purged)
        except Exception as exc:  # the store's own failure, whatever the driver raises
            self._failed("store_error", f"{type(exc).__name__}: {exc}")

    def _failed(self, reason: str, detail: str) -> None:
        log.warning("a chat completion was not stored (%s): %s", reason, detail)
        if self._on_failure is not None:
            self._on_failure(reason)

    async def aclose(self) -> None:
        """Write what is queued (for a bounded time), then close the store."""
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._queue.join(), _DRAIN_SECONDS)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.aclose()
