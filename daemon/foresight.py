"""Deadline foresight: per school and round, how far it is and when it will finish at its pace.

The monitor (daemon/monitor.py) runs `FORESIGHT_SQL` once per refresh; the same rows
feed its `hocba_records` gauges and these. Per (school, academic year, round):

    expected   the roster's students (daemon/registry/rosters.py); no roster: started
    started    records with at least the teacher's signature
    issued     records with all three signatures (`hocba_records_issued`)
    packaged   issued records that went into a package (and on to the ministry)
    accepted   records the ministry accepted
    remaining  expected - issued, never negative
    pace       records issued per hour over the last `PACE_WINDOW_S`, from the monitor's
               own samples (the records table keeps no issue time that is cheap to read
               for 500 schools every 15 s); unknown for the first `MIN_HISTORY_S` after a
               start, and then the projection is not exported
    projected  clock + remaining / pace; +Inf when nothing was issued in the window
    stuck      records in a state a person or the ministry must move, unchanged for
               `STUCK_AFTER_S`

Everything is computed at the injected clock's time, which is exported too
(`hocba_foresight_clock_timestamp_seconds`): the alert rules compare deadlines with it
rather than with Prometheus's `time()`, so an accelerated clock (`make district`) and
the wall clock give the same alerts.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Gauge

from daemon.stages import State

LabelValues = tuple[str, ...]
SchoolRound = tuple[str, str, str]  # school, academic year, round

# A week: signing stops at weekends, and a shorter window would call every school slow
# on Monday morning.
PACE_WINDOW_S = 7 * 86400.0
MIN_HISTORY_S = 3600.0
STUCK_AFTER_S = 3 * 86400.0
# Pace samples closer than this to the previous one are not kept (a day at 15 s a refresh
# would be 5,760 samples per school and round).
_SAMPLE_SPACING_S = PACE_WINDOW_S / 96

PACKAGED_STATES = frozenset(
    {State.PACKAGED, State.SUBMITTED, State.ACCEPTED_BY_MINISTRY, State.REJECTED_BY_MINISTRY}
)
# Waiting for the principal, the seal, the packager or the ministry's answer.
STUCK_STATES = (
    State.SIGNED_BY_TEACHER,
    State.SIGNED_BY_PRINCIPAL,
    State.PACKAGED,
    State.SUBMITTED,
)

# Records of the two latest academic years (a roster's year counts), grouped as the
# `hocba_records` gauges need them, with how many have not changed since $1; then one
# row per roster (state NULL) with the records it expects.
FORESIGHT_SQL = """
WITH years AS (
    SELECT academic_year
    FROM (SELECT DISTINCT academic_year FROM records
          UNION SELECT academic_year FROM rosters) AS y
    ORDER BY 1 DESC LIMIT 2
)
SELECT school_id, academic_year, submission_round, state,
       count(*) AS records, count(*) FILTER (WHERE signatures = 3) AS issued,
       count(*) FILTER (WHERE updated_at < $1) AS unchanged, NULL::integer AS expected
FROM records
WHERE academic_year IN (SELECT academic_year FROM years)
GROUP BY school_id, academic_year, submission_round, state
UNION ALL
SELECT school_id, academic_year, submission_round, NULL, 0, 0, 0, expected_records
FROM rosters
WHERE academic_year IN (SELECT academic_year FROM years)
"""

_KEY = ["school", "academic_year", "round"]
EXPECTED = Gauge(
    "hocba_school_expected_records",
    "Records a school must sign in a round: its roster's students, else the records started.",
    _KEY,
)
STARTED = Gauge(
    "hocba_school_started_records", "Records of a school's round with at least one signature.", _KEY
)
PACKAGED = Gauge(
    "hocba_school_packaged_records",
    "Issued records of a school's round that went into a package (and on to the ministry).",
    _KEY,
)
ACCEPTED = Gauge(
    "hocba_school_accepted_records", "Records of a school's round the ministry accepted.", _KEY
)
REMAINING = Gauge(
    "hocba_school_remaining_records",
    "Records of a school's round still to be issued: expected minus issued.",
    _KEY,
)
PACE = Gauge(
    "hocba_school_pace_records_per_hour",
    "Records a school issued per hour over the last 7 days (of the monitor's clock).",
    _KEY,
)
PROJECTED = Gauge(
    "hocba_school_projected_finish_timestamp_seconds",
    "Unix time a school's round will be issued at its pace (+Inf: nothing issued lately).",
    _KEY,
)
STUCK = Gauge(
    "hocba_school_stuck_records",
    "Records of a school's round left in a state (waiting for a signer, the packager or "
    "the ministry) for more than 3 days.",
    [*_KEY, "state"],
)
CLOCK = Gauge(
    "hocba_foresight_clock_timestamp_seconds",
    "Unix time of the clock the deadline foresight was computed at (the alerts' now).",
)


@dataclass
class LabelledGauge:
    """Sets a whole family at once, removing the label sets that disappeared."""

    gauge: Gauge
    _seen: set[LabelValues] = field(default_factory=set)

    def replace(self, values: Mapping[LabelValues, float]) -> None:
        for labels, value in values.items():
            self.gauge.labels(*labels).set(value)
        for labels in self._seen - values.keys():
            with contextlib.suppress(KeyError):
                self.gauge.remove(*labels)
        self._seen = set(values)


@dataclass
class Progress:
    """One school's round, as the rows say."""

    expected: int | None = None  # None: no roster
    started: int = 0
    issued: int = 0
    packaged: int = 0
    accepted: int = 0
    stuck: dict[str, int] = field(default_factory=dict)

    @property
    def target(self) -> int:
        return self.started if self.expected is None else self.expected

    @property
    def remaining(self) -> int:
        return max(self.target - self.issued, 0)


def progress(rows: Iterable[Mapping[str, object]]) -> dict[SchoolRound, Progress]:
    """Per school and round, from `FORESIGHT_SQL`'s rows."""
    result: dict[SchoolRound, Progress] = {}
    for row in rows:
        key = (str(row["school_id"]), str(row["academic_year"]), str(row["submission_round"]))
        entry = result.setdefault(key, Progress())
        state = row["state"]
        if state is None:
            entry.expected = int(row["expected"])  # type: ignore[call-overload]
            continue
        count = int(row["records"])  # type: ignore[call-overload]
        entry.started += count
        entry.issued += int(row["issued"])  # type: ignore[call-overload]
        if state in PACKAGED_STATES:
            entry.packaged += count
        if state == State.ACCEPTED_BY_MINISTRY:
            entry.accepted += count
        if state in STUCK_STATES:
            entry.stuck[str(state)] = int(row["unchanged"])  # type: ignore[call-overload]
    return result


class PaceTracker:
    """Issued records per school and round over a sliding window of the monitor's samples."""

    def __init__(self, window_s: float = PACE_WINDOW_S, min_history_s: float = MIN_HISTORY_S):
        self._window_s = window_s
        self._min_history_s = min_history_s
        self._kept: dict[SchoolRound, deque[tuple[float, int]]] = {}
        self._latest: dict[SchoolRound, tuple[float, int]] = {}

    def observe(self, now_s: float, issued: Mapping[SchoolRound, int]) -> None:
        for key, count in issued.items():
            kept = self._kept.setdefault(key, deque())
            if kept and now_s < kept[-1][0]:
                kept.clear()  # the clock went back: start over
            if not kept or now_s - kept[-1][0] >= _SAMPLE_SPACING_S:
                kept.append((now_s, count))
            # Keep one sample at or before the window's start, so the window is full.
            while len(kept) > 1 and kept[1][0] <= now_s - self._window_s:
                kept.popleft()
            self._latest[key] = (now_s, count)
        for key in self._kept.keys() - issued.keys():
            del self._kept[key]
            self._latest.pop(key, None)

    def per_second(self, key: SchoolRound) -> float | None:
        """None until the samples span `min_history_s`."""
        kept = self._kept.get(key)
        if not kept or key not in self._latest:
            return None
        first_s, first = kept[0]
        last_s, last = self._latest[key]
        span_s = last_s - first_s
        if span_s < self._min_history_s:
            return None
        return max(last - first, 0) / span_s


def projected_finish_s(now_s: float, remaining: int, pace_per_s: float | None) -> float | None:
    """When the round is issued at this pace; None if the pace is not known yet."""
    if remaining <= 0:
        return now_s
    if pace_per_s is None:
        return None
    if pace_per_s <= 0:
        return math.inf
    return now_s + remaining / pace_per_s


class Foresight:
    """The foresight gauges, set from one refresh's rows at the clock's time."""

    def __init__(self, pace: PaceTracker | None = None) -> None:
        self._pace = pace or PaceTracker()
        self._gauges = {
            name: LabelledGauge(gauge)
            for name, gauge in {
                "expected": EXPECTED,
                "started": STARTED,
                "packaged": PACKAGED,
                "accepted": ACCEPTED,
                "remaining": REMAINING,
                "pace": PACE,
                "projected": PROJECTED,
                "stuck": STUCK,
            }.items()
        }

    def update(self, rounds: Mapping[SchoolRound, Progress], now_s: float) -> None:
        self._pace.observe(now_s, {key: p.issued for key, p in rounds.items()})
        values: dict[str, dict[LabelValues, float]] = {name: {} for name in self._gauges}
        for key, p in rounds.items():
            values["expected"][key] = p.target
            values["started"][key] = p.started
            values["packaged"][key] = p.packaged
            values["accepted"][key] = p.accepted
            values["remaining"][key] = p.remaining
            pace = self._pace.per_second(key)
            if pace is not None:
                values["pace"][key] = pace * 3600
            finish = projected_finish_s(now_s, p.remaining, pace if p.started else 0.0)
            if finish is not None:
                values["projected"][key] = finish
            # Only the states that hold stuck records: 2,000 rounds x 4 states of zeros
            # would be most of the scrape.
            for state, count in p.stuck.items():
                if count:
                    values["stuck"][(*key, state)] = count
        for name, family in self._gauges.items():
            family.replace(values[name])
        CLOCK.set(now_s)
