"""CPU time and peak RSS of process trees, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, and of its children it has waited for."""
    return sum(_cpu_ticks(pid)) / TICKS


def _cpu_ticks(pid: int) -> list[int]:
    """utime, stime, cutime, cstime ([] once the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []
    # after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return [int(f) for f in fields[11:15]]


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size now: shared pages split between the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass(frozen=True)
class TreeSample:
    cpu_s: dict[int, float]
    system_s: dict[int, float]  # the kernel's part of cpu_s
    peak_rss_mb: dict[int, float]
    pss_mb: dict[int, float]

    @classmethod
    def of(cls, pid: int) -> TreeSample:
        pids = tree(pid)
        ticks = {p: _cpu_ticks(p) or [0, 0, 0, 0] for p in pids}
        return cls(
            {p: sum(t) / TICKS for p, t in ticks.items()},
            {p: (t[1] + t[3]) / TICKS for p, t in ticks.items()},
            {p: peak_rss_mb(p) for p in pids},
            {p: pss_mb(p) for p in pids},
        )


def cpu_between(
    before: TreeSample, after: TreeSample, *, system: bool = False, pid: int | None = None
) -> float:
    """CPU seconds the tree (or its process `pid` alone) spent between the samples; the
    kernel's part if `system`."""
    old, new = (before.system_s, after.system_s) if system else (before.cpu_s, after.cpu_s)
    return sum(cpu - old.get(p, 0.0) for p, cpu in new.items() if pid is None or p == pid)


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS


# Who else spends the machine's CPU during a run, by executable name.
_SERVICES = {
    "beam.smp": "rabbitmq",
    "erl_child_setup": "rabbitmq",
    "epmd": "rabbitmq",
    "postgres": "postgresql",
    "mosquitto": "mosquitto",
}


def services_cpu_s() -> dict[str, float]:
    """CPU seconds so far of the broker, database and MQTT processes, by service.

    Processes that ended since the last reading are not counted (PostgreSQL backends
    live as long as their connections, which outlive a run here).
    """
    totals = dict.fromkeys(sorted(set(_SERVICES.values())), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        service = _SERVICES.get(comm)
        if service is not None:
            totals[service] += cpu_seconds(int(entry.name))
    return totals
