"""When the audit chains are anchored: daily, and at the end of each round's deadline."""

from __future__ import annotations

from datetime import datetime, timedelta

from daemon.audit.anchors import next_anchor
from daemon.clock import VIETNAM

DEADLINES = {1: "06-30", 2: "08-25"}
DAY_S = 86_400.0


def test_the_first_anchor_is_due_at_once() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=VIETNAM)
    assert next_anchor(None, now, DAY_S, DEADLINES) == (now, "scheduled")


def test_an_anchor_is_due_a_day_after_the_last() -> None:
    last = datetime(2026, 3, 1, 12, tzinfo=VIETNAM)
    assert next_anchor(last, last, DAY_S, DEADLINES) == (last + timedelta(days=1), "scheduled")


def test_the_end_of_a_deadline_comes_before_the_daily_anchor() -> None:
    # Given the last anchor at noon on 30 June, the round's last day
    last = datetime(2026, 6, 30, 12, tzinfo=VIETNAM)
    # Then the next is at midnight, when the deadline has passed, not at noon on 1 July
    due, reason = next_anchor(last, last, DAY_S, DEADLINES)
    assert (due, reason) == (datetime(2026, 7, 1, tzinfo=VIETNAM), "deadline")
