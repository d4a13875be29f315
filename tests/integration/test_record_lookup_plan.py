"""Looking up one record goes by the primary key, however small `records` was (0013).

Before 0013, a plan made while `records` was small and had no statistics scanned
records_progress by school and filtered the school's records one by one; a connection
kept that plan (the foreign-key checks against records, the daemon's prepared
statements) and its store statement grew slower with every record stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from daemon import migrate
from daemon.dev import env as devenv
from tests import services

SCHOOL = "31000913"
_INSERT = """
INSERT INTO records (school_id, record_id, student_id, academic_year, grade, class_name,
                     submission_round, state, signatures, current_sha256)
SELECT $1, $2 || g, $2 || g, '2025-2026', 5, '5A', 1, 'signed_by_teacher', 1, md5(g::text)
FROM generate_series(1, $3) AS g
"""
# The shape of PostgreSQL's foreign-key check against records, and how its text begins.
_LOOKUP = "SELECT 1 FROM ONLY records x WHERE school_id = $1 AND record_id = $2 FOR KEY SHARE OF x"
_CHECK = 'SELECT 1 FROM ONLY "public"."records"'


@pytest.fixture
async def fresh() -> AsyncIterator[asyncpg.Connection]:
    """A database migrated now, one school, `records` empty and never analyzed."""
    async with services.scratch_database("hocba_lookup") as (_, conn):
        await migrate.migrate(conn)
        await devenv.register_school(conn, SCHOOL, "HS256", b"k" * 32)
        yield conn


def _scans(plan: dict[str, object]) -> list[dict[str, object]]:
    """Every node of a JSON plan that reads `records`."""
    found = [plan] if plan.get("Relation Name") == "records" else []
    for child in plan.get("Plans", []):  # type: ignore[attr-defined]
        found += _scans(child)
    return found


@pytest.mark.parametrize("records", [0, 300])
async def test_a_generic_plan_made_on_a_small_table_uses_the_primary_key(
    fresh: asyncpg.Connection, records: int
) -> None:
    # Given a records table as small as on the day it is deployed, without statistics
    await fresh.execute(_INSERT, SCHOOL, "R-", records)
    # When the look-up of one record is planned for any school and record (the plan a
    # connection caches after five runs)
    await fresh.execute(f"PREPARE lookup (text, text) AS {_LOOKUP}")
    await fresh.execute("SET plan_cache_mode = force_generic_plan")
    raw = await fresh.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE lookup ('{SCHOOL}', 'R-1')")
    # Then it is the primary key, with both columns as its condition
    (scan,) = _scans(json.loads(raw)[0]["Plan"])
    assert scan["Index Name"] == "records_pkey", scan
    assert "record_id = $2" in str(scan["Index Cond"]), scan
    assert "Filter" not in scan, scan


async def test_the_live_record_check_of_a_long_session_reads_one_record(
    fresh: asyncpg.Connection,
) -> None:
    # Given one connection that created records while the table was small (the
    # records_one_live_per_student trigger's foreign-key check planned and cached then)
    for n in range(20):
        await fresh.execute(_INSERT, SCHOOL, f"A{n}-", 1)
    await fresh.execute(_INSERT, SCHOOL, "B-", 2000)
    # When it creates one more, with every nested plan reported to this session
    notices: list[str] = []
    fresh.add_log_listener(lambda _conn, message: notices.append(str(message)))
    await fresh.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;"
        " SET auto_explain.log_format = json; SET auto_explain.log_level = notice"
    )
    await fresh.execute(_INSERT, SCHOOL, "C-", 1)
    await fresh.execute("SET auto_explain.log_min_duration = -1")
    # Then the check against records read one record by the primary key, not the school's
    plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if "plan:" in n]
    checks = [p for p in plans if p["Query Text"].startswith(_CHECK)]
    assert checks, notices
    for check in checks:
        (scan,) = _scans(check["Plan"])
        assert scan["Index Name"] == "records_pkey", scan
        assert scan.get("Rows Removed by Filter", 0) == 0, scan
