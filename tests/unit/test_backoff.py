import pytest

from daemon.backoff import retry_delay_ms, retry_delays_ms


def test_delay_doubles_from_base_until_the_cap() -> None:
    assert [retry_delay_ms(a, 1000, 60_000) for a in range(1, 9)] == [
        1000,
        2000,
        4000,
        8000,
        16000,
        32000,
        60000,
        60000,
    ]


def test_a_huge_attempt_stays_at_the_cap() -> None:
    assert retry_delay_ms(10_000, 1000, 60_000) == 60_000


def test_attempts_are_one_based() -> None:
    with pytest.raises(ValueError):
        retry_delay_ms(0, 1000, 60_000)


def test_one_retry_queue_per_distinct_delay() -> None:
    assert retry_delays_ms(8, 1000, 10_000) == [1000, 2000, 4000, 8000, 10_000]
    assert retry_delays_ms(1, 1000, 10_000) == []
