"""The verification server's rate limit and type sniffing, with a clock the test moves."""

from __future__ import annotations

from daemon.verification import checks
from daemon.verification.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_client_gets_its_burst_then_waits_for_the_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=2, monotonic=clock)
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == 10.0  # one token every 10 s
    assert limiter.take("b") == 0.0  # another client has its own bucket
    clock.now_s += 10
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, monotonic=clock)
    limiter.take("a")
    clock.now_s += 3600
    assert [limiter.take("a") for _ in range(4)][-1] > 0


def test_memory_is_bounded_when_many_clients_come() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=1, max_clients=100, monotonic=clock)
    for n in range(1000):
        limiter.take(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) <= 100


def test_the_declared_type_must_match_the_bytes() -> None:
    assert checks.kind_of("application/pdf", b"%PDF-1.7\n") == "record"
    assert checks.kind_of("application/pdf; charset=binary", b"\n%PDF-1.4") == "record"
    assert checks.kind_of(checks.ASICE, b"PK\x03\x04....") == "package"
    assert checks.kind_of("application/pdf", b"PK\x03\x04") is None
    assert checks.kind_of(checks.ASICE, b"%PDF-1.7") is None
    assert checks.kind_of("text/html", b"%PDF-1.7") is None
