"""The simulated district: schools with rosters and paces, and what is true of them at a time.

Each record of a school has its own timeline (teacher, principal, seal, package,
ministry), all whole seconds, so that what the simulator writes into the database and
what it says is true compare exactly. The ground truth is computed from these
timelines alone, never from the daemon's gauges: the checks compare the two.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from daemon.clock import VIETNAM

YEAR = "2025-2026"
DAY_S = 86400
HOUR_S = 3600
DEADLINES = {1: "06-30", 2: "08-25"}
# What the foresight and its rules use (daemon/foresight.py, hocba-foresight.rules.yml).
PACE_WINDOW_S = 7 * DAY_S
STUCK_AFTER_S = 3 * DAY_S
ALERT_WINDOW_S = 30 * DAY_S
STUCK_STATES = ("signed_by_teacher", "signed_by_principal", "packaged", "submitted")
NEVER = math.inf


def at(month: int, day: int, hour: int = 0) -> int:
    return int(datetime(2026, month, day, hour, tzinfo=VIETNAM).timestamp())


def deadline_s(round_: int) -> int:
    month, day = (int(p) for p in DEADLINES[round_].split("-"))
    return int(datetime(2026, month, day, 23, 59, 59, tzinfo=VIETNAM).timestamp())


@dataclass(frozen=True)
class Record:
    index: int
    teacher_s: float
    principal_s: float  # NEVER: the principal never signs (stuck)
    issued_s: float
    packaged_s: float
    accepted_s: float
    rejected_s: float = NEVER  # the ministry rejected its package at this time ...
    repackaged_s: float = NEVER  # ... and it was packaged again at this one

    def state(self, t: float) -> tuple[str, int, float] | None:
        """(state, signatures, since) at time t; None before the teacher signs."""
        if t < self.teacher_s:
            return None
        if t < self.principal_s:
            return ("signed_by_teacher", 1, self.teacher_s)
        if t < self.issued_s:
            return ("signed_by_principal", 2, self.principal_s)
        steps = [
            (self.issued_s, "issued"),
            (self.packaged_s, "packaged"),
            (self.packaged_s + HOUR_S, "submitted"),
            (self.accepted_s, "accepted_by_ministry"),
        ]
        if self.rejected_s < NEVER:
            steps = [s for s in steps if s[0] < self.rejected_s]
            steps += [
                (self.rejected_s, "rejected_by_ministry"),
                (self.repackaged_s, "packaged"),
                (self.repackaged_s + HOUR_S, "submitted"),
                (self.repackaged_s + DAY_S, "accepted_by_ministry"),
            ]
        since, name = max((s for s in steps if s[0] <= t), key=lambda s: s[0])
        return (name, 3, since)


@dataclass
class School:
    school_id: str
    profile: str  # steady, slow, never, burst, stuck, rejected
    round_: int
    expected: int
    start_s: int
    finish_s: int  # when the last record is issued (by design; stuck ones never are)
    stuck: int = 0
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.profile == "never":
            return
        step_s = (self.finish_s - self.start_s) / self.expected
        packaging_s = deadline_s(self.round_) - 7 * DAY_S
        for i in range(self.expected):
            issued = int(self.start_s + (i + 1) * step_s)
            teacher = max(issued - 6 * HOUR_S, self.start_s)
            principal: float = issued - 3 * HOUR_S if i >= self.stuck else NEVER
            packaged = max(packaging_s, _next_night(issued))
            rejected = repackaged = NEVER
            if self.profile == "rejected":
                rejected, repackaged = packaged + DAY_S, packaged + 6 * DAY_S
            record = Record(
                i,
                teacher,
                principal,
                issued if principal < NEVER else NEVER,
                packaged if principal < NEVER else NEVER,
                packaged + DAY_S if principal < NEVER else NEVER,
                rejected if principal < NEVER else NEVER,
                repackaged if principal < NEVER else NEVER,
            )
            self.records.append(record)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.school_id, YEAR, str(self.round_))

    def issued(self, t: float) -> int:
        return sum(1 for r in self.records if r.issued_s <= t)

    def started(self, t: float) -> int:
        return sum(1 for r in self.records if r.teacher_s <= t)


def _next_night(t: int) -> int:
    """The packaging schedule's next run after t: 01:00 the next day."""
    day = datetime.fromtimestamp(t, VIETNAM).replace(hour=1, minute=0, second=0)
    return int(day.timestamp()) + DAY_S


def district(schools: int, seed: int) -> list[School]:
    """`schools` schools (at least 10): steady most, 4% slow, two stuck, one rejected
    package, one that never starts, one that bursts late; 10% have a round 2 too."""
    rng = random.Random(seed)
    d1, d2 = deadline_s(1), deadline_s(2)
    result: list[School] = []
    special = {0: "never", 1: "burst", 2: "stuck", 3: "stuck", 4: "rejected"}
    for n in range(schools):
        school_id = f"3{n:07d}"
        profile = special.get(n) or ("slow" if rng.random() < 0.04 else "steady")
        expected = rng.randint(40, 120)
        start = at(5, 1) + rng.randint(0, 20 * DAY_S)
        finish = d1 - rng.randint(4 * DAY_S, 20 * DAY_S)
        if profile == "slow":
            finish = d1 + rng.randint(5 * DAY_S, 30 * DAY_S)
        elif profile == "burst":
            start, finish = at(6, 27), at(6, 27, 10)
        result.append(
            School(school_id, profile, 1, expected, start, finish, 6 if profile == "stuck" else 0)
        )
        if n % 10 == 5:
            late = n == 5  # round 2's slow school
            finish2 = d2 + 10 * DAY_S if late else d2 - rng.randint(4 * DAY_S, 15 * DAY_S)
            start2 = at(7, 10) + rng.randint(0, 5 * DAY_S)
            profile2 = "slow" if late else "steady"
            result.append(School(school_id, profile2, 2, rng.randint(5, 20), start2, finish2))
    return result


def rows_at(school: School, t: float) -> Iterator[tuple[int, str, int, float]]:
    """(record index, state, signatures, since) of the school's records that exist at t."""
    for record in school.records:
        state = record.state(t)
        if state is not None:
            yield (record.index, *state)


@dataclass(frozen=True)
class Truth:
    """What the alerts and the panel must say at one time."""

    not_started: dict[tuple[str, str, str], int]  # -> expected
    too_slow: dict[tuple[str, str, str], int]  # -> remaining
    stuck: dict[tuple[str, str, str, str], int]  # (+ state) -> records
    rejected: dict[tuple[str, str, str], int]  # -> records rejected_by_ministry
    missed: dict[tuple[str, str, str], int]  # -> remaining
    will_miss_next: dict[tuple[str, str, str], tuple[int, int]]  # -> (started, remaining)


def truth(schools: list[School], t: int, sim_start: int) -> Truth:
    """The ground truth at t, from the timelines alone."""
    deadlines = {r: deadline_s(r) for r in DEADLINES}
    upcoming = [r for r, d in deadlines.items() if d > t]
    next_round = min(upcoming, key=deadlines.__getitem__) if upcoming else None
    found: dict[str, dict] = {k: {} for k in Truth.__dataclass_fields__}
    for s in schools:
        started, remaining, finish = _projection(s, t, sim_start)
        due = deadlines[s.round_]
        left = due - t
        open_ = 0 < left < ALERT_WINDOW_S
        late = remaining > 0 and finish > due
        if open_ and started == 0 and s.expected > 0:
            found["not_started"][s.key] = s.expected
        if open_ and started > 0 and late:
            found["too_slow"][s.key] = remaining
        if remaining > 0 and -ALERT_WINDOW_S < left < 0:
            found["missed"][s.key] = remaining
        if s.round_ == next_round and late:
            found["will_miss_next"][s.key] = (started, remaining)
        stuck, rejected = _waiting(s, t)
        if rejected:
            found["rejected"][s.key] = rejected
        if left > -ALERT_WINDOW_S:
            found["stuck"].update({(*s.key, state): n for state, n in stuck.items()})
    return Truth(**found)


def _projection(s: School, t: int, sim_start: int) -> tuple[int, int, float]:
    """(started, remaining, finish at the pace of the last 24 hours)."""
    window_start = max(t - PACE_WINDOW_S, sim_start)
    started, issued = s.started(t), s.issued(t)
    remaining = max(s.expected - issued, 0)
    pace = (issued - s.issued(window_start)) / max(t - window_start, 1)
    if remaining == 0:
        return started, remaining, float(t)
    if started == 0 or pace <= 0:
        return started, remaining, math.inf
    return started, remaining, t + remaining / pace


def _waiting(s: School, t: int) -> tuple[dict[str, int], int]:
    """Records unchanged for STUCK_AFTER_S per stuck state; records rejected_by_ministry."""
    stuck: dict[str, int] = {}
    rejected = 0
    for _, state, _, since in rows_at(s, t):
        if state in STUCK_STATES and since < t - STUCK_AFTER_S:
            stuck[state] = stuck.get(state, 0) + 1
        rejected += state == "rejected_by_ministry"
    return stuck, rejected
