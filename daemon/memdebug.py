"""Opt-in glibc allocator statistics in the log, to tell fragmentation from a leak.

Off unless `HOCBA_DEBUG_MEMORY` is set (to a number of seconds, or 1 for every 30 s):
then one INFO sentence per interval with `mallinfo2()` and the arena count from
`malloc_info()`. Nothing listens and nothing is exposed: it only writes to the log, so
it adds no attack surface. On a libc without these calls (musl) it logs once and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "HOCBA_DEBUG_MEMORY"
DEFAULT_INTERVAL_S = 30.0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@dataclass(frozen=True)
class AllocatorStats:
    arena_kb: int  # bytes obtained with sbrk/arena mmaps, all arenas
    mmap_kb: int  # bytes in chunks mmapped on their own (large allocations)
    in_use_kb: int  # allocated and not freed
    free_kb: int  # free inside the arenas: fragmentation when it grows
    keepcost_kb: int  # releasable at the top of the main heap
    arenas: int


def interval_s(environ: dict[str, str] | None = None) -> float | None:
    """The sampling interval `HOCBA_DEBUG_MEMORY` asks for, or None when off."""
    value = (environ if environ is not None else os.environ).get(ENV, "").strip()
    if value in ("", "0"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return DEFAULT_INTERVAL_S if seconds == 1 else max(seconds, 1.0)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallinfo2") or not hasattr(libc, "malloc_info"):
        return None
    libc.mallinfo2.restype = _Mallinfo2
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _malloc_info_xml(libc: ctypes.CDLL) -> str:
    buffer = ctypes.c_char_p()
    size = ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if not stream:
        return ""
    try:
        libc.malloc_info(0, stream)
    finally:
        libc.fclose(stream)
    try:
        return ctypes.string_at(buffer, size.value).decode("ascii", "replace")
    finally:
        libc.free(buffer)


def sample(libc: ctypes.CDLL) -> AllocatorStats:
    info = libc.mallinfo2()
    arenas = len(re.findall(r"<heap nr=", _malloc_info_xml(libc)))
    return AllocatorStats(
        arena_kb=info.arena // 1024,
        mmap_kb=info.hblkhd // 1024,
        in_use_kb=info.uordblks // 1024,
        free_kb=info.fordblks // 1024,
        keepcost_kb=info.keepcost // 1024,
        arenas=arenas,
    )


async def log_allocator(stop: asyncio.Event, every_s: float) -> None:
    """Log the allocator's statistics every `every_s` seconds until `stop` is set."""
    libc = _libc()
    if libc is None:
        log.info("Allocator statistics unavailable: this libc has no mallinfo2.")
        return
    while True:  # one sample at once, then one per interval until `stop`
        s = sample(libc)
        log.info(
            "Allocator: arena_kb=%d mmap_kb=%d in_use_kb=%d free_kb=%d keepcost_kb=%d "
            "arenas=%d.",
            s.arena_kb, s.mmap_kb, s.in_use_kb, s.free_kb, s.keepcost_kb, s.arenas,
        )  # fmt: skip
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass


def start(stack: contextlib.AsyncExitStack) -> None:
    """Start the logging task on `stack` when `HOCBA_DEBUG_MEMORY` asks for it."""
    every_s = interval_s()
    if every_s is None:
        return
    stop = asyncio.Event()
    task = asyncio.create_task(log_allocator(stop, every_s), name="allocator-stats")

    async def finish() -> None:
        stop.set()
        await task

    stack.push_async_callback(finish)
