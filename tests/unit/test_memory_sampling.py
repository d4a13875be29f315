"""The soak's memory measurements (tests/chaos/memory.py) and the daemon's opt-in
allocator log (daemon/memdebug.py) that the soak reads."""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import tracemalloc
from pathlib import Path

import pytest

from daemon import memdebug
from tests.chaos import memory


def test_slope_is_megabytes_per_hour() -> None:
    # 1 MB more every 10 minutes is 6 MB/h, whatever the noise around the line
    points = [(600.0 * n, 100.0 + n + (0.2 if n % 2 else -0.2)) for n in range(7)]
    slope = memory.slope_mb_per_h(points)
    assert slope == pytest.approx(6.0, abs=0.5)
    assert memory.slope_mb_per_h([(0, 100.0), (3600, 100.0)]) == 0
    assert memory.slope_mb_per_h([(0, 100.0)]) is None


def test_prometheus_samples_counts_series_not_comments() -> None:
    text = (
        "# HELP hocba_x a counter\n# TYPE hocba_x counter\n"
        'hocba_x_total{stage="a"} 1.0\nhocba_x_total{stage="b"} 2.0\n\nhocba_up 1\n'
    )
    assert memory.prometheus_samples(text) == 3


def test_own_process_is_measured_from_proc() -> None:
    rss_kb, pss_kb = memory.rollup_kb(os.getpid())
    assert rss_kb > 1024 and 0 < pss_kb <= rss_kb
    usage = memory.group_usage(os.getpgid(0))
    assert os.getpid() in [pid for u in usage.values() for pid in u.pids]
    assert memory.total(usage.values()).fds >= 3  # stdin, stdout, stderr at least


def test_the_regions_add_up_to_the_rss_and_see_an_anonymous_mapping() -> None:
    before = memory.regions_kb(os.getpid())
    rss_kb, _ = memory.rollup_kb(os.getpid())
    total_kb = before.heap_kb + before.anon_kb + before.file_kb
    assert abs(total_kb - rss_kb) < 0.1 * rss_kb  # pages come and go between the reads
    assert before.file_kb > 1024  # the interpreter's own code, at least
    block = mmap.mmap(-1, 32 << 20)  # 32 MiB, anonymous, touched page by page
    try:
        block.write(b"x" * (32 << 20))
        grown = memory.regions_kb(os.getpid()).anon_kb - before.anon_kb
        assert 30 << 10 < grown < 40 << 10
    finally:
        block.close()


def test_worker_kinds_from_the_command_line() -> None:
    spawn = "python3 -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=12)"
    tracker = "python3 -c from multiprocessing.resource_tracker import main;main(11)"
    assert memory.kind_of(10, 10, "hocba-signer run") == memory.MAIN
    assert memory.kind_of(11, 10, spawn) == memory.HSM_WORKER
    assert memory.kind_of(12, 10, tracker) == memory.TRACKER


def test_interval_is_off_unless_asked() -> None:
    assert memdebug.interval_s({}) is None
    assert memdebug.interval_s({"HOCBA_DEBUG_MEMORY": "0"}) is None
    assert memdebug.interval_s({"HOCBA_DEBUG_MEMORY": "1"}) == memdebug.DEFAULT_INTERVAL_S
    assert memdebug.interval_s({"HOCBA_DEBUG_MEMORY": "5"}) == 5.0


def test_allocator_sees_a_large_allocation() -> None:
    libc = memdebug._libc()
    if libc is None:
        pytest.skip("no glibc mallinfo2 here")
    before = memdebug.sample(libc)
    block = bytearray(64 * 1024 * 1024)  # above the mmap threshold: its own mapping
    during = memdebug.sample(libc)
    del block
    assert during.mmap_kb - before.mmap_kb >= 64 * 1024
    assert during.arenas >= 1


async def test_the_soak_reads_what_the_daemon_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if memdebug._libc() is None:
        pytest.skip("no glibc mallinfo2 here")
    stop = asyncio.Event()
    stop.set()  # one sample, then stop
    with caplog.at_level(logging.INFO, logger="daemon.memdebug"):
        await memdebug.log_allocator(stop, 30.0)
    log = tmp_path / "daemon.log"
    log.write_text("".join(f"2026-05-20 INFO daemon.memdebug: {m}\n" for m in caplog.messages))

    stats = memory.last_allocator_stats(log)

    assert stats is not None
    assert stats["in_use_kb"] > 0 and stats["arenas"] >= 1


async def test_the_trim_gives_a_fragmented_heap_back_to_the_kernel() -> None:
    if memdebug._libc() is None:
        pytest.skip("no glibc malloc_trim here")

    def rss_mb() -> float:
        return (
            int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 1e6
        )

    # Holes in the heap: many blocks under the mmap threshold, two of three freed.
    blocks = [bytearray(8 * 1024 + n % 4096) for n in range(12_000)]
    kept = blocks[::3]
    del blocks
    before = rss_mb()
    stop = asyncio.Event()
    task = asyncio.create_task(memdebug.trim_periodically(stop, 0.05))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert len(kept) == 4_000
    assert rss_mb() < before - 30, (before, rss_mb())


def test_the_soak_runs_with_the_allocator_settings_of_the_unit() -> None:
    from tests.chaos import soak

    found = soak.unit_allocator_env(soak.UNIT.read_text())

    assert found == {"MALLOC_MMAP_THRESHOLD_": "32768", "MALLOC_ARENA_MAX": "2"}


def test_traced_growth_names_the_line_that_keeps_memory(caplog: pytest.LogCaptureFixture) -> None:
    tracemalloc.start(4)
    try:
        first = memdebug._log_traced_growth(None)
        kept = [bytearray(1000) for _ in range(2000)]  # ~2 MB held past the baseline
        with caplog.at_level(logging.INFO, logger="daemon.memdebug"):
            assert memdebug._log_traced_growth(first) is first
    finally:
        tracemalloc.stop()
    top = caplog.records[0].getMessage()
    assert top.startswith("Traced growth: +") and "test_memory_sampling.py" in top, top
    assert len(kept) == 2000


class _Holder:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}


def test_a_growing_container_is_named_by_its_owner(caplog: pytest.LogCaptureFixture) -> None:
    # a dict of atoms only, which the collector does not track, held by an attribute
    holder = _Holder()
    first = memdebug._log_type_growth(None)
    holder.seen.update((f"k{n}", n) for n in range(5000))
    with caplog.at_level(logging.INFO, logger="daemon.memdebug"):
        memdebug._log_type_growth(first)
    grown = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Container")]
    assert grown[0] == "Container grown: dict of 5000 items (+5000) held by _Holder.seen.", grown
