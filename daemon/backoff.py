"""Capped exponential backoff, as a pure function."""

from __future__ import annotations


def retry_delay_ms(attempt: int, base_ms: int, cap_ms: int) -> int:
    """The delay before retry number `attempt` (1-based): base, 2·base, 4·base, … up to cap."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    # Bound the exponent so a huge attempt count cannot build a huge integer.
    return min(cap_ms, base_ms * 2 ** min(attempt - 1, 32))


def retry_delays_ms(max_attempts: int, base_ms: int, cap_ms: int) -> list[int]:
    """Every distinct delay a message can wait, one retry queue each."""
    return sorted({retry_delay_ms(a, base_ms, cap_ms) for a in range(1, max_attempts)})
