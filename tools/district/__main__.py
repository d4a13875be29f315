"""`make district`: a district of schools run through both deadlines on an accelerated clock.

A reduced signing path, on purpose: the point is the numbers, so the simulator writes
the schools, their rosters and their records (at the states and times its own model
says) with its own SQL into a database of its own, as the pipeline and the packager
would leave them; nothing is signed. What reads them is the real thing: the daemon's
Monitor (daemon/monitor.py, daemon/foresight.py) on the simulated clock, its gauges
scraped as Prometheus would, then the repository's alert rules and the Deadlines
dashboard's "Will miss the next deadline" queries evaluated by promtool against the
ground truth of the model (tools/district/model.py). One JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import REGISTRY, generate_latest
from yarl import URL

from daemon import migrate
from daemon.clock import VIETNAM
from daemon.database import Database
from daemon.monitor import Monitor
from daemon.settings import Settings
from tools.district import check
from tools.district.model import (
    DAY_S,
    DEADLINES,
    HOUR_S,
    YEAR,
    School,
    at,
    district,
    rows_at,
    truth,
)

STEP_S = 12 * HOUR_S
CHECKPOINTS = [
    at(5, 20, 12), at(6, 3, 12), at(6, 15, 12), at(6, 25, 12), at(6, 29, 12),
    at(7, 3, 12), at(7, 30, 12), at(8, 10, 12), at(8, 24, 12), at(8, 28, 12),
]  # fmt: skip
START, END = at(5, 1), at(9, 3)


class SimClock:
    def __init__(self, now_s: int) -> None:
        self.now_s = now_s

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.now_s, VIETNAM)


class NoQueues:
    """The simulation has no broker: the monitor's queue gauges stay as they are."""

    async def depths(self) -> Mapping[str, tuple[int, int]]:
        return {}


async def _create(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return str(URL(admin_dsn).with_path(name))


async def _drop(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _register(conn: asyncpg.Connection, schools: list[School]) -> None:
    ids = sorted({s.school_id for s in schools})
    await conn.executemany(
        """INSERT INTO schools (school_id, name, consent_alg, consent_key)
           VALUES ($1, $2, 'HS256', $3)""",
        [(i, f"Trường {i}", os.urandom(32)) for i in ids],
    )
    await conn.executemany(
        """INSERT INTO rosters (school_id, academic_year, submission_round, sent_at,
                               expected_records)
           VALUES ($1, $2, $3, $4, $5)""",
        [(s.school_id, YEAR, s.round_, datetime.fromtimestamp(START, VIETNAM), s.expected)
         for s in schools],
    )  # fmt: skip


async def _write(conn: asyncpg.Connection, schools: list[School], t: int, held: dict) -> int:
    """Upsert the records whose state changed since the last step; how many."""
    changed = []
    for s in schools:
        for index, state, signatures, since in rows_at(s, t):
            key = (s.school_id, s.round_, index)
            if held.get(key) == state:
                continue
            held[key] = state
            stamp = datetime.fromtimestamp(since, VIETNAM)
            created = datetime.fromtimestamp(s.records[index].teacher_s, VIETNAM)
            record_id = f"R{s.round_}-{index:05d}"
            changed.append(
                (s.school_id, record_id, f"{s.school_id}-{s.round_}-{index}", YEAR, 10, "10A1",
                 s.round_, state, signatures, "0" * 64, created, stamp)
            )  # fmt: skip
    if changed:
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE step (LIKE records) ON COMMIT DROP")
            await conn.copy_records_to_table(
                "step",
                records=changed,
                columns=[
                    "school_id", "record_id", "student_id", "academic_year", "grade",
                    "class_name", "submission_round", "state", "signatures",
                    "current_sha256", "created_at", "updated_at",
                ],
            )  # fmt: skip
            await conn.execute(
                """INSERT INTO records SELECT * FROM step
                   ON CONFLICT (school_id, record_id) DO UPDATE
                   SET state = EXCLUDED.state, signatures = EXCLUDED.signatures,
                       updated_at = EXCLUDED.updated_at"""
            )
    return len(changed)


def _bar(done: int, total: int, t: int, note: str) -> None:
    width = 40
    filled = width * done // total
    day = datetime.fromtimestamp(t, VIETNAM).strftime("%Y-%m-%d %H:%M")
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {day} {note}")
    sys.stderr.flush()


async def simulate(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    admin = str(URL(settings.database.dsn).with_path("postgres"))
    name = f"hocba_district_{os.getpid()}"
    schools = district(args.schools, args.seed)
    dsn = await _create(admin, name)
    started = time.monotonic()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate.migrate(conn)
            await _register(conn, schools)
            db = Database(settings.database.model_copy(update={"dsn": dsn}))
            await db.open()
            try:
                return await _run(args, schools, conn, db, started)
            finally:
                await db.close()
        finally:
            await conn.close()
    finally:
        if not args.keep:
            await _drop(admin, name)


async def _run(
    args: argparse.Namespace,
    schools: list[School],
    conn: asyncpg.Connection,
    db: Database,
    started: float,
) -> dict[str, Any]:
    clock = SimClock(START)
    monitor = Monitor(db, NoQueues(), {}, DEADLINES, clock=clock)
    steps = list(range(START, END + 1, STEP_S))
    held: dict = {}
    tests: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    refresh_ms: list[float] = []
    written = 0
    for n, t in enumerate(steps, 1):
        clock.now_s = t
        written += await _write(conn, schools, t, held)
        begin = time.perf_counter()
        await monitor.refresh()
        refresh_ms.append((time.perf_counter() - begin) * 1000)
        if t in CHECKPOINTS:
            expected = truth(schools, t, START)
            tests.append(check.test_case(generate_latest(REGISTRY).decode(), expected))
            checkpoints.append(_summary(t, expected))
        _bar(n, len(steps), t, f"{written} record changes")
    sys.stderr.write("\nEvaluating the alert rules and the panel with promtool ...\n")
    with tempfile.TemporaryDirectory(prefix="hocba-district-") as workdir:
        passed, report = await asyncio.to_thread(check.run_promtool, tests, Path(workdir))
        if args.keep_tests:
            await asyncio.to_thread(_copy, Path(workdir) / "district.test.yml", args.keep_tests)
    refresh_ms.sort()
    return {
        "schools": len({s.school_id for s in schools}),
        "rounds": len(schools),
        "records": sum(s.expected for s in schools),
        "profiles": _profiles(schools),
        "simulated_days": (END - START) // DAY_S,
        "steps": len(steps),
        "record_changes_written": written,
        "monitor_refresh_ms": {
            "p50": round(refresh_ms[len(refresh_ms) // 2], 1),
            "max": round(refresh_ms[-1], 1),
        },
        "checkpoints": checkpoints,
        "checks_passed": passed,
        "promtool": report if not passed else report.splitlines()[-1:],
        "wall_s": round(time.monotonic() - started, 1),
    }


def _copy(source: Path, target: str) -> None:
    Path(target).write_text(source.read_text("utf-8"), "utf-8")


def _profiles(schools: list[School]) -> dict[str, list[str] | int]:
    result: dict[str, list[str] | int] = {}
    for s in schools:
        name = f"round{s.round_}_{s.profile}"
        if s.profile == "steady":
            count = result.get(name, 0)
            result[name] = (count if isinstance(count, int) else 0) + 1
        else:
            listed = result.setdefault(name, [])
            if isinstance(listed, list):
                listed.append(s.school_id)
    return result


def _summary(t: int, expected: Any) -> dict[str, Any]:
    def names(found: Mapping[tuple[str, ...], Any]) -> list[str]:
        return sorted({"/".join(k[:1] + k[2:]) for k in found})

    return {
        "at": datetime.fromtimestamp(t, VIETNAM).isoformat(),
        "not_started": names(expected.not_started),
        "too_slow": names(expected.too_slow),
        "stuck": names(expected.stuck),
        "package_rejected": names(expected.rejected),
        "missed_deadline": names(expected.missed),
        "will_miss_next_deadline": len(expected.will_miss_next),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.district", description=__doc__)
    parser.add_argument("--schools", type=int, default=500)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", action="store_true", help="keep the simulation's database")
    parser.add_argument("--keep-tests", metavar="FILE", help="write promtool's test file here")
    args = parser.parse_args()
    summary = asyncio.run(simulate(args))
    print(json.dumps(summary, ensure_ascii=False))
    sys.exit(0 if summary["checks_passed"] else 1)


if __name__ == "__main__":
    main()
