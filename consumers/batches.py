"""Micro-batches: items taken together, up to a size or a short linger after the first.

Per message, the glue around a signature (a database round trip to decide, one to
store, an acknowledgement frame, a hand-off to the HSM workers) costs more CPU than
the work it carries; taken together, a batch pays each of them once. A batch leaves
as soon as it is full, or `linger_s` after its first item arrived, so a lone request
waits at most that long. But while `busy` batches are already running (one signing,
one storing), a short batch goes on filling until one of them ends or it is full:
under load a 2 ms linger alone let batches of 3-4 leave beside running ones (README
"Throughput"), and a batch that would only wait for the workers anyway may as well
take the requests arriving meanwhile. Each batch runs in a task of its own, kept
until it ends (`running`), so that the consumer can wait for it, or cancel it, when
it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Runs `work(items)` once per batch of up to `size` items; `submit` returns when done."""

    def __init__(
        self,
        size: int,
        linger_s: float,
        work: Callable[[list[T]], Awaitable[None]],
        busy: int | None = None,
    ) -> None:
        self._size = size
        self._linger_s = linger_s
        self._work = work
        self._busy = busy  # None: a short batch leaves after the linger, always
        self._open: list[tuple[T, asyncio.Future[None]]] = []
        # Set while the open batch lingers; None with items open: it lingered out and
        # waits for a running batch to end (held).
        self._timer: asyncio.TimerHandle | None = None
        self.running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> None:
        """Add `item` to the open batch; return once its batch's work has finished."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._open.append((item, done))
        if len(self._open) >= self._size:
            self._flush()
        elif len(self._open) == 1:
            self._timer = loop.call_later(self._linger_s, self._lingered)
        await done

    def _lingered(self) -> None:
        self._timer = None
        if self._busy is not None and len(self.running) >= self._busy:
            return  # held: it fills on, and _ended sends it when a running batch ends
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._open = self._open, []
        if not batch:
            return
        task = asyncio.create_task(self._run(batch), name="sign-batch")
        self.running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if self._open and self._timer is None:  # held
            self._flush()

    async def _run(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        failure: BaseException | None = None
        try:
            await self._work([item for item, _ in batch])
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except Exception as exc:  # each waiter gets it: the task's own result is unread
            failure = exc
        finally:
            for _, done in batch:
                _resolve(done, failure)


def _resolve(done: asyncio.Future[Any], failure: BaseException | None) -> None:
    if done.done():
        return  # its waiter was cancelled
    if failure is None:
        done.set_result(None)
    elif isinstance(failure, asyncio.CancelledError):
        done.cancel()
    else:
        done.set_exception(failure)
