"""When packages are due: a pure function of the date, the deadlines and the lead time."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta


def academic_year(deadline: date) -> str:
    """The school year a deadline closes: 30 June 2026 closes "2025-2026"."""
    return f"{deadline.year - 1}-{deadline.year}"


def due_rounds(
    today: date, deadlines: Mapping[int, str], lead_days: int, grace_days: int
) -> list[tuple[str, int]]:
    """(academic year, round) whose window [deadline - lead, deadline + grace] holds today.

    `deadlines` maps a round to its "MM-DD"; late records are still packaged during the
    grace days, as the ministry takes supplementary packages after the deadline.
    """
    found = []
    for round_, month_day in sorted(deadlines.items()):
        month, day = (int(part) for part in month_day.split("-"))
        for year in (today.year - 1, today.year, today.year + 1):
            deadline = date(year, month, day)
            opens = deadline - timedelta(days=lead_days)
            closes = deadline + timedelta(days=grace_days)
            if opens <= today <= closes:
                found.append((academic_year(deadline), round_))
    return found
