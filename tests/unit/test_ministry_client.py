"""Retry-After parsing, and how backoff and Retry-After combine."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.packaging.submission import Submitter
from daemon.settings import MinistrySettings
from producers.ministry import retry_after_s

AT = datetime(2026, 6, 30, 16, 0, 0, tzinfo=UTC)


def test_retry_after_in_seconds() -> None:
    assert retry_after_s("120", AT) == 120.0


def test_retry_after_as_an_http_date() -> None:
    assert retry_after_s("Tue, 30 Jun 2026 16:00:30 GMT", AT) == 30.0


def test_retry_after_in_the_past_means_now() -> None:
    assert retry_after_s("Tue, 30 Jun 2026 15:00:00 GMT", AT) == 0.0


def test_no_or_garbled_retry_after() -> None:
    assert retry_after_s(None, AT) is None
    assert retry_after_s("soon", AT) is None


def _submitter() -> Submitter:
    settings = MinistrySettings(retry_base_ms=1000, retry_cap_ms=8000, max_retry_after_s=60)
    return Submitter(db=None, ministry=None, settings=settings)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [_submitter()._delay_s(n, None, poll=False) for n in range(1, 6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_a_longer_retry_after_wins_but_is_capped() -> None:
    submitter = _submitter()
    assert submitter._delay_s(1, 30.0, poll=False) == 30.0
    assert submitter._delay_s(1, 3600.0, poll=False) == 60.0
    assert submitter._delay_s(4, 0.5, poll=False) == 8.0
