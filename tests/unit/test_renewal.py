"""The renewal schedule's next run, and what its progress shows."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from daemon.clock import VIETNAM
from daemon.ltv.renewal import Due, Shown, next_run


def test_next_run_is_today_before_the_hour_and_tomorrow_after() -> None:
    morning = datetime(2031, 5, 20, 1, 0, tzinfo=VIETNAM)
    assert next_run(morning, "02:30") == datetime(2031, 5, 20, 2, 30, tzinfo=VIETNAM)
    at_the_hour = datetime(2031, 5, 20, 2, 30, tzinfo=VIETNAM)
    assert next_run(at_the_hour, "02:30") == datetime(2031, 5, 21, 2, 30, tzinfo=VIETNAM)
    # a UTC clock: 20:00 UTC is 03:00 the next day in Vietnam, after 02:30
    evening_utc = datetime(2031, 5, 20, 20, 0, tzinfo=UTC)
    assert next_run(evening_utc, "02:30") == datetime(2031, 5, 22, 2, 30, tzinfo=VIETNAM)


def _due(n: int) -> Due:
    return Due("31000101", f"R-{n}", "ab" * 32, datetime(2031, 1, 1, tzinfo=UTC), "certificate")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    shown = Shown(out)
    shown.start(2)
    shown.advance(_due(1), "renewed")
    shown.advance(_due(2), "failed")
    shown.finish()
    assert out.getvalue().splitlines() == [
        "ltv renew: 2 records due",
        "ltv renew: 1/2 31000101/R-1 renewed",
        "ltv renew: 2/2 31000101/R-2 failed",
    ]


def test_a_bar_on_a_terminal() -> None:
    out = _Terminal()
    shown = Shown(out, width=10)
    shown.start(4)
    shown.advance(_due(1), "renewed")
    shown.advance(_due(2), "renewed")
    shown.finish()
    frames = out.getvalue().split("\r")
    assert frames[-1] == "ltv renew [#####.....] 2/4, 2 renewed\n"
    assert "\n" not in "".join(frames[:-1])
