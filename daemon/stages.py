"""The legal order of signatures on a record, and the state each one leads to."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    HOMEROOM_TEACHER = "homeroom_teacher"
    PRINCIPAL = "principal"
    SCHOOL_SEAL = "school_seal"

    @property
    def field_name(self) -> str:
        """The PDF signature field this stage fills."""
        return _FIELDS[self]

    @property
    def position(self) -> int:
        """1 for the first signature, 3 for the seal."""
        return ORDER.index(self) + 1

    @property
    def state(self) -> State:
        """The record's state once this stage is signed."""
        return _STATES[self]


class State(StrEnum):
    SIGNED_BY_TEACHER = "signed_by_teacher"
    SIGNED_BY_PRINCIPAL = "signed_by_principal"
    ISSUED = "issued"
    REJECTED = "rejected"
    PACKAGED = "packaged"
    SUBMITTED = "submitted"
    ACCEPTED_BY_MINISTRY = "accepted_by_ministry"
    REJECTED_BY_MINISTRY = "rejected_by_ministry"


ORDER: tuple[Stage, ...] = (Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL, Stage.SCHOOL_SEAL)
FIELD_NAMES: tuple[str, ...] = ("GVCN", "HieuTruong", "DauTruong")
_FIELDS = dict(zip(ORDER, FIELD_NAMES, strict=True))
_STATES = {
    Stage.HOMEROOM_TEACHER: State.SIGNED_BY_TEACHER,
    Stage.PRINCIPAL: State.SIGNED_BY_PRINCIPAL,
    Stage.SCHOOL_SEAL: State.ISSUED,
}


def next_stage(signatures: int) -> Stage | None:
    """The stage a record with this many signatures needs next; None once issued."""
    return ORDER[signatures] if signatures < len(ORDER) else None
