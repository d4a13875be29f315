"""CPU work off the event loop, the calls of one loop iteration in one thread hop.

`asyncio.to_thread` costs a hop per call: a future, a pool thread woken, the GIL
handed over and back, a wake-up of the loop through its self-pipe (~40-90 µs of CPU
in all on the machines the benchmarks ran on). The first stage of a batch decodes up
to `amqp.batch_size` large messages and inspects as many PDFs, each gathered, so
their calls are made in one iteration of the loop: `Offload` hands them to one pool
thread together, which runs them one after the other (they hold the GIL, as they
would in several threads) and wakes the loop once with every result.

Each call keeps its own result or exception, and its caller's context variables, as
with `to_thread`. A caller cancelled while its call waits or runs gets no result; the
call is not stopped (as with `to_thread`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class Offload:
    """Runs the calls made in one loop iteration in one thread of the loop's default pool."""

    def __init__(self) -> None:
        self._pending: list[_Call] = []

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            # Runs after every callback already ready, e.g. the other tasks of a gather.
            loop.call_soon(self._dispatch, loop)
        self._pending.append((contextvars.copy_context(), fn, args, future))
        return await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        calls, self._pending = self._pending, []
        try:
            loop.run_in_executor(None, _run, loop, calls)
        except RuntimeError as exc:  # the pool is shut down (the loop is closing)
            for _, _, _, future in calls:
                if not future.done():
                    future.set_exception(exc)


def _run(loop: asyncio.AbstractEventLoop, calls: list[_Call]) -> None:
    """In the pool thread: every call in turn, then one wake-up of the loop with all."""
    results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    for context, fn, args, future in calls:
        try:
            results.append((future, context.run(fn, *args), None))
        except BaseException as exc:  # as concurrent.futures keeps it, so the rest run
            results.append((future, None, exc))
    try:
        loop.call_soon_threadsafe(_settle, results)
    except RuntimeError:  # the loop closed meanwhile: nobody waits for these
        pass


def _settle(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, exc in results:
        if future.cancelled():
            continue
        if exc is None:
            future.set_result(value)
        elif isinstance(exc, StopIteration):  # which an asyncio future cannot carry
            future.set_exception(RuntimeError(f"The call raised {exc!r}."))
        else:
            future.set_exception(exc)
