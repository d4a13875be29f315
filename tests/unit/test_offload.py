"""Offload: the calls of one loop iteration in one thread hop, each with its own result."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
import time

import pytest

from daemon.offload import Offload

_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def _where(n: int) -> tuple[int, int, float]:
    started = time.monotonic()
    time.sleep(0.01)
    return n, threading.get_ident(), started


def _fail_on_odd(n: int) -> int:
    if n % 2:
        raise ValueError(f"odd {n}")
    return n * 10


async def test_calls_gathered_together_run_in_one_thread_one_after_another() -> None:
    offload = Offload()
    results = await asyncio.gather(*(offload(_where, n) for n in range(6)))
    assert [n for n, _, _ in results] == list(range(6))
    assert len({thread for _, thread, _ in results}) == 1
    assert threading.get_ident() not in {thread for _, thread, _ in results}
    starts = [started for _, _, started in results]
    assert starts == sorted(starts)
    assert all(b - a >= 0.009 for a, b in itertools.pairwise(starts))


async def test_each_call_keeps_its_own_result_or_exception() -> None:
    offload = Offload()
    results = await asyncio.gather(
        *(offload(_fail_on_odd, n) for n in range(5)), return_exceptions=True
    )
    assert results[0::2] == [0, 20, 40]
    assert [str(e) for e in results[1::2]] == ["odd 1", "odd 3"]
    assert all(isinstance(e, ValueError) for e in results[1::2])


async def test_a_call_of_a_later_iteration_does_not_wait_for_a_running_batch() -> None:
    offload = Offload()
    slow = asyncio.ensure_future(offload(time.sleep, 0.5))
    await asyncio.sleep(0.05)  # the slow call's batch is running
    assert await asyncio.wait_for(offload(_fail_on_odd, 2), 0.4) == 20
    assert not slow.done()
    await slow


class _Halt(BaseException):
    pass


def _halt() -> None:
    raise _Halt


def _stop() -> None:
    raise StopIteration


async def test_a_base_exception_is_its_callers_alone_and_the_rest_still_run() -> None:
    offload = Offload()
    results = await asyncio.wait_for(
        asyncio.gather(offload(_halt), offload(_stop), offload(_fail_on_odd, 4),
                       return_exceptions=True),
        5,
    )  # fmt: skip
    assert isinstance(results[0], _Halt)
    assert isinstance(results[1], RuntimeError) and "StopIteration" in str(results[1])
    assert results[2] == 40


async def test_the_callers_context_variables_are_seen() -> None:
    offload = Offload()

    async def as_(name: str) -> str:
        _who.set(name)
        return await offload(_who.get)

    assert await asyncio.gather(as_("teacher"), as_("principal")) == ["teacher", "principal"]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    offload = Offload()
    loop = asyncio.get_running_loop()
    cancelled = loop.create_task(offload(_where, 0))
    kept = loop.create_task(offload(_where, 1))
    await asyncio.sleep(0)  # both submitted, in one dispatch
    cancelled.cancel()
    assert (await kept)[0] == 1
    with pytest.raises(asyncio.CancelledError):
        await cancelled
