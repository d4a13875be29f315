"""The glibc allocator of a process that runs for months: trimmed, and watched on demand.

**Trim** (`memory.trim_interval_s`, default 60 s; 0: never): `malloc_trim(0)` hands the
free pages inside the heaps back to the kernel. Without it, memory freed between
requests stays in the process as holes that a later, larger request cannot always
reuse: the soak saw the main heap's free space grow from 3 to 15 MB in an hour while
what was in use stayed at 24 MB (README, Development: the soak). A trim walks the
heaps: 8-50 ms for a fragmented 300 MB heap measured here, less for the daemon's tens
of MB; it runs in a thread (ctypes lets go of the GIL), not on the event loop.

**Statistics** (opt-in, to tell fragmentation from a leak): off unless
`HOCBA_DEBUG_MEMORY` is set (to a number of seconds, or 1 for every 30 s): then one
INFO sentence per interval with `mallinfo2()`, the arena count from `malloc_info()` and
the number of objects CPython's allocator holds (`sys.getallocatedblocks()`); with
`HOCBA_DEBUG_MEMORY_OBJECTS=1` too, the eight object types (by name) whose count grew
most since five minutes in and the five containers that grew most in length, named by
their owner (`Class.attribute`; never a key or a value), a walk of every object that
blocks the event loop for a fraction of a second each time; and, when
the process traces its allocations (`PYTHONTRACEMALLOC=N`, N frames), the five
allocation sites that grew most since a snapshot taken after five minutes (once caches
and pools are warm), with their call stacks (code locations only, no data). Tracing
costs the process several times its memory (110 to 550 MB in 20 minutes with 8 frames,
in the soak) and much of its CPU: for a diagnosis,
on one instance beside others that do not trace (`make soak`'s `--instance-env`).
Nothing listens and nothing is exposed: it only writes to the log, so it adds no attack
surface. On a libc without these calls (musl) both log once and stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import re
import sys
import time
import tracemalloc
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "HOCBA_DEBUG_MEMORY"
DEFAULT_INTERVAL_S = 30.0
TRACE_BASELINE_S = 300.0
OBJECTS_ENV = "HOCBA_DEBUG_MEMORY_OBJECTS"


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
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
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
    first: tracemalloc.Snapshot | None = None
    types: _Baseline | None = None
    started = time.monotonic()
    while True:  # one sample at once, then one per interval until `stop`
        s = sample(libc)
        log.info(
            "Allocator: arena_kb=%d mmap_kb=%d in_use_kb=%d free_kb=%d keepcost_kb=%d "
            "arenas=%d py_blocks=%d.",
            s.arena_kb, s.mmap_kb, s.in_use_kb, s.free_kb, s.keepcost_kb, s.arenas,
            sys.getallocatedblocks(),
        )  # fmt: skip
        if time.monotonic() - started >= TRACE_BASELINE_S:
            if os.environ.get(OBJECTS_ENV):
                types = _log_type_growth(types)
            if tracemalloc.is_tracing():
                first = _log_traced_growth(first)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass


_CONTAINERS = (dict, list, set, collections.deque, collections.OrderedDict)


@dataclass
class _Baseline:
    types: collections.Counter[str]
    sizes: dict[int, int]  # id → len of every container of 64 items or more


def _log_type_growth(first: _Baseline | None) -> _Baseline:
    """Log the object types whose count grew most since `first` (taken now if None), and
    the containers that grew most in length, by their owner's type and attribute."""
    objects = gc.get_objects()
    # A dict or list of atoms only (str to int, say) is not tracked by the collector:
    # found as what tracked objects refer to.
    objects += [
        r
        for o in objects
        for r in gc.get_referents(o)
        if isinstance(r, _CONTAINERS) and not gc.is_tracked(r)
    ]
    sizes = {id(o): len(o) for o in objects if isinstance(o, _CONTAINERS) and len(o) >= 64}
    counts = collections.Counter(type(o).__qualname__ for o in objects)
    if first is None:
        return _Baseline(counts, sizes)
    grown = sorted(((n - first.types[t], t) for t, n in counts.items()), reverse=True)[:8]
    log.info("Objects grown: %s.", ", ".join(f"{t} {d:+d}" for d, t in grown))
    own = {id(first.types), id(first.sizes)}
    longer = sorted(
        ((n - first.sizes.get(i, 0), i) for i, n in sizes.items() if i not in own), reverse=True
    )
    top = {ident for _, ident in longer[:5]}
    by_id = {id(o): o for o in objects if id(o) in top}
    for delta, ident in longer[:5]:
        container = by_id.get(ident)
        if container is not None and delta > 0:
            log.info("Container grown: %s of %d items (%+d) held by %s.",
                     type(container).__qualname__, len(container), delta,
                     _owner(container))  # fmt: skip
    return first


def _owner(container: object) -> str:
    """Where a container hangs: `Type.attribute` or `module.name`, as far as one step shows."""
    for referrer in gc.get_referrers(container):
        if not isinstance(referrer, dict):
            attributes = getattr(referrer, "__dict__", None)
            if isinstance(attributes, dict):  # an instance whose dict is not an object
                name = next((k for k, v in attributes.items() if v is container), None)
                if isinstance(name, str):
                    return f"{type(referrer).__qualname__}.{name}"
            continue
        name = next((k for k, v in referrer.items() if v is container), None)
        if not isinstance(name, str) or not name.isidentifier():
            continue  # a value under a data key (a record id, say): not shown
        if "__name__" in referrer and isinstance(referrer.get("__name__"), str):
            return f"{referrer['__name__']}.{name}"
        for holder in gc.get_referrers(referrer):
            if getattr(holder, "__dict__", None) is referrer:
                return f"{type(holder).__qualname__}.{name}"
        return f"a dict's {name}"
    return "?"


def _log_traced_growth(first: tracemalloc.Snapshot | None) -> tracemalloc.Snapshot:
    """Log the sites that grew most since `first` (taken now if None); return `first`."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    if first is None:
        return snapshot
    grown = sorted(snapshot.compare_to(first, "traceback"), key=lambda s: -s.size_diff)
    for stat in grown[:5]:
        frames = " < ".join(f"{f.filename}:{f.lineno}" for f in reversed(stat.traceback))
        log.info(
            "Traced growth: %+d kB in %+d blocks at %s.",
            stat.size_diff // 1024, stat.count_diff, frames,
        )  # fmt: skip
    return first


async def trim_periodically(stop: asyncio.Event, every_s: float) -> None:
    """`malloc_trim(0)` every `every_s` seconds until `stop` is set."""
    libc = _libc()
    if libc is None:
        log.info("Not trimming the heap: this libc has no malloc_trim.")
        return
    while True:
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            await asyncio.to_thread(libc.malloc_trim, 0)


def start(stack: contextlib.AsyncExitStack, trim_every_s: float = 0) -> None:
    """Start the trim (every `trim_every_s`, 0: never) and, when `HOCBA_DEBUG_MEMORY`
    asks for it, the statistics' logging, on `stack`."""
    stop = asyncio.Event()
    tasks = []
    if trim_every_s > 0:
        tasks.append(asyncio.create_task(trim_periodically(stop, trim_every_s), name="trim"))
    every_s = interval_s()
    if every_s is not None:
        tasks.append(asyncio.create_task(log_allocator(stop, every_s), name="allocator-stats"))
    if not tasks:
        return

    async def finish() -> None:
        stop.set()
        await asyncio.gather(*tasks)

    stack.push_async_callback(finish)
