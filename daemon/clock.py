"""The time of day as one injectable dependency, so tests (and the district simulation) move it.

Everything that stamps a status event, a package or a consent check takes a `Clock`;
only the composition root picks the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

VIETNAM = timezone(timedelta(hours=7), "ICT")

Clock = Callable[[], datetime]


def vietnam_now() -> datetime:
    """The wall clock in Vietnam's time zone (UTC+7, no daylight saving)."""
    return datetime.now(VIETNAM)
