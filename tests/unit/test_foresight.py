"""Deadline foresight: per school, what is left and when it finishes at its pace."""

from __future__ import annotations

import math

from prometheus_client import REGISTRY

from daemon.foresight import Foresight, PaceTracker, progress, projected_finish_s

KEY = ("31000101", "2025-2026", "1")
HOUR_S = 3600.0


def _row(state: str | None, records: int = 0, issued: int = 0, unchanged: int = 0, **kw: object):
    return {
        "school_id": kw.get("school", "31000101"),
        "academic_year": "2025-2026",
        "submission_round": 1,
        "state": state,
        "records": records,
        "issued": issued,
        "unchanged": unchanged,
        "expected": kw.get("expected"),
    }


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_roster_sets_what_is_expected_and_states_add_up() -> None:
    rows = [
        _row(None, expected=120),
        _row("signed_by_teacher", 30, unchanged=4),
        _row("issued", 40, issued=40),
        _row("submitted", 10, issued=10),
        _row("accepted_by_ministry", 20, issued=20),
    ]

    p = progress(rows)[KEY]

    assert (p.target, p.started, p.issued, p.packaged, p.accepted) == (120, 100, 70, 30, 20)
    assert p.remaining == 50
    assert p.stuck == {"signed_by_teacher": 4, "submitted": 0}


def test_without_a_roster_the_records_started_are_expected() -> None:
    p = progress([_row("signed_by_principal", 8), _row("issued", 2, issued=2)])[KEY]
    assert (p.target, p.remaining) == (10, 8)


def test_the_pace_is_unknown_until_an_hour_of_samples_then_spans_the_window() -> None:
    pace = PaceTracker(window_s=24 * HOUR_S, min_history_s=HOUR_S)
    pace.observe(0, {KEY: 0})
    pace.observe(0.5 * HOUR_S, {KEY: 10})
    assert pace.per_second(KEY) is None

    pace.observe(2 * HOUR_S, {KEY: 40})
    assert pace.per_second(KEY) == 20 / HOUR_S

    # A day later the first samples have left the window: only the last 24 h count.
    for hour in range(3, 30):
        pace.observe(hour * HOUR_S, {KEY: 40 + (hour - 2) * 5})
    assert math.isclose(pace.per_second(KEY) or 0, 5 / HOUR_S, rel_tol=0.01)


def test_the_projection_is_infinite_without_pace_and_now_when_done() -> None:
    assert projected_finish_s(1000.0, 100, 0.0) == math.inf
    assert projected_finish_s(1000.0, 100, None) is None
    assert projected_finish_s(1000.0, 100, 0.5) == 1200.0
    assert projected_finish_s(1000.0, 0, None) == 1000.0


def test_the_gauges_name_the_slow_school_and_the_one_not_started() -> None:
    # Given a slow school, one that has not started, both with rosters, over two hours
    foresight = Foresight(PaceTracker(min_history_s=HOUR_S))
    slow = ("31000101", "2025-2026", "1")
    idle = ("31000199", "2025-2026", "1")
    for hour, issued in ((0, 0), (1, 3), (2, 6)):
        rows = [
            _row(None, expected=100),
            _row("issued", issued, issued=issued),
            _row("signed_by_principal", 5, unchanged=5 if hour == 2 else 0),
            _row(None, expected=80, school="31000199"),
        ]
        foresight.update(progress(rows), 1_000_000 + hour * HOUR_S)

    # Then the slow school finishes 94 / (3 per hour) hours from now
    labels = dict(zip(("school", "academic_year", "round"), slow, strict=True))
    now_s = 1_000_000 + 2 * HOUR_S
    assert _sample("hocba_school_remaining_records", **labels) == 94
    assert _sample("hocba_school_pace_records_per_hour", **labels) == 3
    finish = _sample("hocba_school_projected_finish_timestamp_seconds", **labels)
    assert finish == now_s + 94 / 3 * HOUR_S
    stuck = _sample("hocba_school_stuck_records", **labels, state="signed_by_principal")
    assert stuck == 5
    # And the school that has not started expects 80 and never finishes at its pace
    idle_labels = dict(zip(("school", "academic_year", "round"), idle, strict=True))
    assert _sample("hocba_school_started_records", **idle_labels) == 0
    assert _sample("hocba_school_expected_records", **idle_labels) == 80
    assert _sample("hocba_school_projected_finish_timestamp_seconds", **idle_labels) == math.inf
    assert _sample("hocba_foresight_clock_timestamp_seconds") == now_s
