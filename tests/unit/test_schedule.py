"""Which rounds are due on which day."""

from __future__ import annotations

from datetime import date

from daemon.packaging.schedule import academic_year, due_rounds

DEADLINES = {1: "06-30", 2: "08-25"}


def test_round_one_is_due_from_the_lead_time_before_30_june() -> None:
    assert due_rounds(date(2026, 6, 22), DEADLINES, 7, 0) == []
    assert due_rounds(date(2026, 6, 23), DEADLINES, 7, 0) == [("2025-2026", 1)]
    assert due_rounds(date(2026, 6, 30), DEADLINES, 7, 0) == [("2025-2026", 1)]
    assert due_rounds(date(2026, 7, 1), DEADLINES, 7, 0) == []


def test_late_records_are_still_due_within_the_grace_days() -> None:
    assert due_rounds(date(2026, 7, 10), DEADLINES, 7, 10) == [("2025-2026", 1)]


def test_both_rounds_can_be_due_at_once() -> None:
    assert due_rounds(date(2026, 8, 20), DEADLINES, 7, 60) == [
        ("2025-2026", 1),
        ("2025-2026", 2),
    ]


def test_nothing_is_due_in_the_school_year() -> None:
    assert due_rounds(date(2026, 11, 28), DEADLINES, 7, 30) == []


def test_a_deadline_closes_the_school_year_that_ends_with_it() -> None:
    assert academic_year(date(2026, 8, 25)) == "2025-2026"
