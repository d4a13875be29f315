"""The district simulation's ground truth (tools/district/model.py) says what its profiles mean."""

from __future__ import annotations

from tools.district.model import YEAR, at, deadline_s, district, truth


def test_the_special_schools_are_named_for_what_they_are() -> None:
    schools = district(20, seed=14)
    never, burst, stuck = ("30000000", YEAR, "1"), ("30000001", YEAR, "1"), ("30000002", YEAR, "1")

    mid_june = truth(schools, at(6, 15, 12), at(5, 1))
    assert never in mid_june.not_started and burst in mid_june.not_started
    assert (*stuck, "signed_by_teacher") in mid_june.stuck
    assert mid_june.stuck[(*stuck, "signed_by_teacher")] == 6

    # After its burst, the late school is done; the one that never started missed
    after = truth(schools, deadline_s(1) + 3 * 86400, at(5, 1))
    assert burst not in after.missed
    assert after.missed[never] == next(s.expected for s in schools if s.school_id == never[0])
    assert after.missed[stuck] == 6


def test_a_rejected_package_waits_then_is_accepted() -> None:
    schools = district(20, seed=14)
    rejected = ("30000004", YEAR, "1")
    assert rejected in truth(schools, at(6, 25, 12), at(5, 1)).rejected
    assert rejected not in truth(schools, at(7, 3, 12), at(5, 1)).rejected
