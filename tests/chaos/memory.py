"""Memory sampling for the soak: per instance and per process kind, from /proc.

A daemon runs in its own process group: the main process (its pid is the group's id),
its HSM workers (multiprocessing `spawn` children) and multiprocessing's resource
tracker. For each kind: RSS and PSS summed from /proc/<pid>/smaps_rollup (PSS shares
the pages several processes map, so the instances' PSS adds up to what they cost the
machine), the processes' count and their open file descriptors. The main process's
allocator statistics come from its log (`daemon/memdebug.py`, when the soak starts it
with HOCBA_DEBUG_MEMORY); the Prometheus registry's size from a /metrics scrape.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MAIN = "main"
HSM_WORKER = "hsm_worker"
TRACKER = "resource_tracker"


@dataclass
class Regions:
    """Resident kB of one process by kind of mapping (smaps)."""

    heap_kb: int = 0  # [heap]: glibc's main arena (brk)
    anon_kb: int = 0  # other anonymous mappings (shared ones too), stacks included
    file_kb: int = 0  # file-backed: the interpreter, libraries, mapped files


@dataclass
class Usage:
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    fds: int = 0
    processes: int = 0
    pids: list[int] = field(default_factory=list)
    heap_mb: float = 0.0
    anon_mb: float = 0.0
    file_mb: float = 0.0

    def add(self, pid: int, rss_kb: int, pss_kb: int, fds: int, regions: Regions) -> None:
        self.rss_mb += rss_kb / 1024
        self.pss_mb += pss_kb / 1024
        self.fds += fds
        self.processes += 1
        self.pids.append(pid)
        self.heap_mb += regions.heap_kb / 1024
        self.anon_mb += regions.anon_kb / 1024
        self.file_mb += regions.file_kb / 1024


def rollup_kb(pid: int, proc: Path = Path("/proc")) -> tuple[int, int]:
    """(RSS, PSS) in kB of one process, from smaps_rollup."""
    rss = pss = 0
    for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def regions_kb(pid: int, proc: Path = Path("/proc")) -> Regions:
    """Where a process's resident pages are, from /proc/<pid>/smaps."""
    regions = Regions()
    kind = "anon"
    for line in (proc / str(pid) / "smaps").read_text().splitlines():
        first = line.split(maxsplit=6)
        if not first:
            continue
        if "-" in first[0] and not first[0].endswith(":"):  # a mapping's header line
            name = first[5] if len(first) > 5 else ""
            kind = "heap" if name == "[heap]" else "file" if _file_backed(name) else "anon"
        elif first[0] == "Rss:":
            kb = int(first[1])
            if kind == "heap":
                regions.heap_kb += kb
            elif kind == "file":
                regions.file_kb += kb
            else:
                regions.anon_kb += kb
    return regions


def _file_backed(name: str) -> bool:
    """A mapping of a real file; shared anonymous memory shows as /dev/zero or memfd."""
    return name.startswith("/") and not name.startswith(("/dev/zero", "/memfd:", "/SYSV"))


def open_fds(pid: int, proc: Path = Path("/proc")) -> int:
    return len(os.listdir(proc / str(pid) / "fd"))


def kind_of(pid: int, main_pid: int, cmdline: str) -> str:
    if pid == main_pid:
        return MAIN
    if "resource_tracker" in cmdline:
        return TRACKER
    return HSM_WORKER if "multiprocessing" in cmdline else "other"


def group_usage(pgid: int, proc: Path = Path("/proc")) -> dict[str, Usage]:
    """Memory of every process in process group `pgid`, by kind."""
    usage: dict[str, Usage] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError, ValueError):
            # /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss, pss = rollup_kb(pid, proc)
            fds, regions = open_fds(pid, proc), regions_kb(pid, proc)
            usage.setdefault(kind_of(pid, pgid, cmdline), Usage()).add(pid, rss, pss, fds, regions)
    return usage


def total(usages: Iterable[Usage]) -> Usage:
    """The sum of several kinds' usage."""
    summed = Usage()
    for usage in usages:
        summed.rss_mb += usage.rss_mb
        summed.pss_mb += usage.pss_mb
        summed.fds += usage.fds
        summed.processes += usage.processes
        summed.pids += usage.pids
        summed.heap_mb += usage.heap_mb
        summed.anon_mb += usage.anon_mb
        summed.file_mb += usage.file_mb
    return summed


def group_total(pgid: int, proc: Path = Path("/proc")) -> Usage:
    """All the processes of a group together (e.g. `p11-kit server` and its children)."""
    return total(group_usage(pgid, proc).values()) if pgid else Usage()


def slope_mb_per_h(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of (seconds, MB) points, in MB per hour; None under 2."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (m - mean_m) for t, m in points)
    return cov / var * 3600


_ALLOCATOR = re.compile(
    r"Allocator: arena_kb=(\d+) mmap_kb=(\d+) in_use_kb=(\d+) free_kb=(\d+) "
    r"keepcost_kb=(\d+) arenas=(\d+) py_blocks=(\d+)"
)
_ALLOCATOR_KEYS = (
    "arena_kb", "mmap_kb", "in_use_kb", "free_kb", "keepcost_kb", "arenas", "py_blocks",
)  # fmt: skip


def last_allocator_stats(log: Path, tail_bytes: int = 1 << 20) -> dict[str, int] | None:
    """The last allocator sentence `daemon/memdebug.py` wrote to a daemon's log."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    found = _ALLOCATOR.findall(text)
    if not found:
        return None
    return dict(zip(_ALLOCATOR_KEYS, (int(v) for v in found[-1]), strict=True))


def prometheus_samples(text: str) -> int:
    """The number of samples in a Prometheus text exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def scrape_samples(port: int, timeout_s: float = 5.0) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            return prometheus_samples(r.read().decode())
    except OSError:
        return None
