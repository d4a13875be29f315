"""The background gauges: values from the database rows, deadlines, stale label sets."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from daemon.clock import VIETNAM
from daemon.monitor import (
    LabelledGauge,
    deadline,
    queue_names,
    record_counts,
)
from daemon.settings import AmqpSettings

DEADLINES = {1: "06-30", 2: "08-25"}


def _row(school: str, state: str, records: int, issued: int = 0, round_: int = 1) -> dict:
    return {
        "school_id": school,
        "academic_year": "2025-2026",
        "submission_round": round_,
        "state": state,
        "records": records,
        "issued": issued,
    }


def test_deadlines_end_on_the_deadline_day_in_vietnam() -> None:
    assert deadline("2025-2026", 1, "06-30") == datetime(2026, 6, 30, 23, 59, 59, tzinfo=VIETNAM)
    assert deadline("2025-2026", 2, "08-25") == datetime(2026, 8, 25, 23, 59, 59, tzinfo=VIETNAM)
    assert deadline("next year", 1, "06-30") is None


def test_record_counts_show_every_state_and_count_issued_records() -> None:
    # Given a school with records in three states (the packaged ones carry 3 signatures)
    rows = [
        _row("31000101", "signed_by_teacher", 40),
        _row("31000101", "issued", 50, issued=50),
        _row("31000101", "packaged", 10, issued=10),
    ]

    # When the gauge values are computed
    counts = record_counts(rows, DEADLINES)

    # Then each state of the school's round has a value, zeros included
    key = ("31000101", "2025-2026", "1")
    assert counts.records[(*key, "signed_by_teacher")] == 40
    assert counts.records[(*key, "signed_by_principal")] == 0
    assert counts.records[(*key, "accepted_by_ministry")] == 0
    assert (*key, "rejected") not in counts.records
    # And issued counts every record with three signatures, packaged ones included
    assert counts.issued == {key: 60}
    # And both rounds of the year have their deadline
    assert counts.deadlines[("2025-2026", "1")] == deadline("2025-2026", 1, "06-30").timestamp()  # type: ignore[union-attr]
    assert ("2025-2026", "2") in counts.deadlines


def test_a_labelled_gauge_drops_the_label_sets_that_disappeared() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("hocba_test_records", "Test.", ["school"], registry=registry)
    family = LabelledGauge(gauge)

    family.replace({("31000101",): 3, ("31000102",): 4})
    family.replace({("31000102",): 5})

    text = generate_latest(registry).decode()
    assert 'school="31000101"' not in text
    assert 'hocba_test_records{school="31000102"} 5.0' in text


def test_queue_names_are_those_the_topology_declares() -> None:
    names = queue_names(AmqpSettings(max_attempts=4, retry_base_ms=100, retry_cap_ms=400))
    assert names[:2] == ["hocba.sign", "hocba.sign.dead"]
    assert [n for n in names if n.startswith("hocba.sign.retry.")] == [
        "hocba.sign.retry.100",
        "hocba.sign.retry.200",
        "hocba.sign.retry.400",
    ]
