"""The registry's pure parts: the signer CSV, consent-key rotation, roster and student rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon import consent, rules
from daemon.consent import ConsentKey
from daemon.errors import ConsentExpired, DuplicateRecord, InvalidMessage, Unauthorized
from daemon.messages import RecordInfo, SignRequest, decode_roster
from daemon.records import Lookup, Record
from daemon.registry import csvfile, keyring
from daemon.registry.keyring import RetiredKey
from daemon.registry.rosters import ClassBinding
from daemon.stages import Stage

SCHOOL = "31000123"
INFO = RecordInfo(
    record_id="2025-2026-5A-07",
    student_id="3100012300007",
    academic_year="2025-2026",
    grade=5,
    class_name="5A",
    submission_round=1,
)
NOW = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)


# --- the CSV -------------------------------------------------------------------------


def test_every_bad_line_is_reported_with_its_number_and_the_good_ones_kept() -> None:
    text = (
        "school_id,signer_id,stage,name\n"
        f"{SCHOOL},GV-0001,homeroom_teacher,Nguyễn Văn A\n"
        f"{SCHOOL},GV-0002,GVCN,Trần Thị B\n"
        "\n"
        f"{SCHOOL},GV 0003,homeroom_teacher,\n"
        f"{SCHOOL},BGH-0001,teacher,\n"
        f"{SCHOOL},GV-0001,principal,\n"
        f'{SCHOOL},SEAL,"school_seal",\n'
    )
    lines, errors = csvfile.parse(text)

    assert [(ln.line, ln.signer_id, ln.stage) for ln in lines] == [
        (2, "GV-0001", Stage.HOMEROOM_TEACHER),
        (3, "GV-0002", Stage.HOMEROOM_TEACHER),
        (8, "SEAL", Stage.SCHOOL_SEAL),
    ]
    assert [str(e) for e in errors] == [
        "line 5: signer_id 'GV 0003' is not an id",
        "line 6: signer BGH-0001: stage 'teacher' is none of homeroom_teacher, principal, "
        "school_seal",
        "line 7: signer GV-0001: appears again (first on line 2)",
    ]


def test_the_school_may_come_from_the_command_and_must_then_agree() -> None:
    lines, errors = csvfile.parse("signer_id,stage\nGV-0001,principal\n", school_id=SCHOOL)
    assert [(ln.school_id, ln.stage) for ln in lines] == [(SCHOOL, Stage.PRINCIPAL)]
    assert errors == []

    _, errors = csvfile.parse("school_id,signer_id,stage\n31000999,G,principal\n", SCHOOL)
    assert [str(e) for e in errors] == [
        f"line 2: signer G: school_id 31000999 is not the school named by --school ({SCHOOL})"
    ]


def test_a_header_without_the_needed_columns_is_refused_as_line_1() -> None:
    with pytest.raises(InvalidMessage, match="line 1: the header lacks school_id"):
        csvfile.parse("signer_id,stage\nGV-0001,principal\n")


# --- consent keys --------------------------------------------------------------------


def _ed25519() -> tuple[bytes, ConsentKey]:
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), ConsentKey("EdDSA", private.public_key().public_bytes_raw())


def _consent(private: bytes, exp: datetime) -> str:
    claims = {"iss": SCHOOL, "sub": "GV-0001", "stg": "homeroom_teacher"}
    claims |= {"rec": INFO.record_id, "dig": "ab" * 32, "exp": int(exp.timestamp())}
    return consent.mint(claims, "EdDSA", private)


SUBJECT = consent.Subject(SCHOOL, "GV-0001", INFO.record_id, "homeroom_teacher", "ab" * 32)


def test_a_consent_under_the_previous_key_counts_until_its_grace_period_ends() -> None:
    # Given a school that rotated its key at NOW, the old one valid for 48 hours more
    old_private, old_key = _ed25519()
    new_private, new_key = _ed25519()
    retired = [RetiredKey(old_key, NOW + timedelta(hours=48))]
    later = NOW + timedelta(hours=47)
    old_token = _consent(old_private, later + timedelta(hours=1))

    # Then the new key's consents count, and the old key's until the grace ends
    new_token = _consent(new_private, later + timedelta(hours=1))
    assert keyring.verify(new_token, new_key, retired, SUBJECT, later)["sub"] == "GV-0001"
    assert keyring.verify(old_token, new_key, retired, SUBJECT, later)["sub"] == "GV-0001"
    after = NOW + timedelta(hours=48, seconds=1)
    late_token = _consent(old_private, after + timedelta(hours=1))
    with pytest.raises(Unauthorized, match="retired consent key whose grace period ended"):
        keyring.verify(late_token, new_key, retired, SUBJECT, after)


def test_an_expired_consent_under_the_previous_key_is_expired_not_forged() -> None:
    old_private, old_key = _ed25519()
    _, new_key = _ed25519()
    retired = [RetiredKey(old_key, NOW + timedelta(hours=48))]
    token = _consent(old_private, NOW - timedelta(hours=1))
    with pytest.raises(ConsentExpired):
        keyring.verify(token, new_key, retired, SUBJECT, NOW)


def test_a_consent_under_a_key_the_school_never_had_is_refused() -> None:
    stranger, _ = _ed25519()
    _, old_key = _ed25519()
    _, new_key = _ed25519()
    token = _consent(stranger, NOW + timedelta(hours=1))
    retired = [RetiredKey(old_key, NOW + timedelta(hours=1))]
    with pytest.raises(Unauthorized, match="signature does not verify"):
        keyring.verify(token, new_key, retired, SUBJECT, NOW)


def test_key_files_are_read_as_the_school_system_hands_them_over(tmp_path: Path) -> None:
    written = keyring.generate_key_file("EdDSA", tmp_path / "school.pem")
    assert (tmp_path / "school.pem").stat().st_mode & 0o777 == 0o600
    public = tmp_path / "public.hex"
    public.write_text(written.key.hex())
    assert keyring.read_key_file("EdDSA", public) == written
    short = tmp_path / "short"
    short.write_text("ab" * 16)
    with pytest.raises(InvalidMessage, match="at least 32 bytes"):
        keyring.read_key_file("HS256", short)
    with pytest.raises(FileExistsError):
        keyring.generate_key_file("HS256", tmp_path / "school.pem")


# --- rosters and students ------------------------------------------------------------


def _request(stage: Stage, signer: str, info: RecordInfo = INFO) -> SignRequest:
    document = {"sha256": "ab" * 32, "content_b64": "eA=="} if stage.position == 1 else None
    return SignRequest.model_validate(
        {
            "type": "hocba.sign_request.v1",
            "request_id": uuid.uuid4(),
            "school_id": SCHOOL,
            "record": info.model_dump(),
            "stage": stage,
            "signer_id": signer,
            "document": document,
            "consent": "a.b.c",
            "requested_at": NOW,
        }
    )


def _found(
    roster: ClassBinding | None, live: str | None = None, record: Record | None = None
) -> Lookup:
    return Lookup(None, None, None, record, roster, live)


def test_once_a_roster_names_the_class_teacher_only_that_teacher_signs_it() -> None:
    roster = ClassBinding("GV-0001", ("BGH-0001",))
    rules.check_enrolment(_found(roster), _request(Stage.HOMEROOM_TEACHER, "GV-0001"))
    with pytest.raises(Unauthorized, match="names GV-0001 as homeroom teacher of class 5A"):
        rules.check_enrolment(_found(roster), _request(Stage.HOMEROOM_TEACHER, "GV-0002"))
    unlisted = ClassBinding(None, ())
    with pytest.raises(Unauthorized, match="Class 5A is not in the school's roster"):
        rules.check_enrolment(_found(unlisted), _request(Stage.HOMEROOM_TEACHER, "GV-0001"))
    # Without a roster for the round, any registered homeroom teacher may sign
    rules.check_enrolment(_found(None), _request(Stage.HOMEROOM_TEACHER, "GV-0002"))


def test_a_roster_with_principals_binds_the_principal_stage() -> None:
    held = Record(INFO, "signed_by_teacher", 1, "cd" * 32)
    roster = ClassBinding("GV-0001", ("BGH-0001",))
    rules.check_enrolment(_found(roster, record=held), _request(Stage.PRINCIPAL, "BGH-0001"))
    with pytest.raises(Unauthorized, match="does not name BGH-0002 as a principal"):
        rules.check_enrolment(_found(roster, record=held), _request(Stage.PRINCIPAL, "BGH-0002"))
    rules.check_enrolment(_found(ClassBinding("GV-0001", ()), record=held),
                          _request(Stage.PRINCIPAL, "BGH-0002"))  # fmt: skip


def test_a_second_record_for_a_student_is_refused_unless_it_corrects_the_first() -> None:
    request = _request(Stage.HOMEROOM_TEACHER, "GV-0001")
    with pytest.raises(DuplicateRecord, match="already has record 2025-2026-5A-01"):
        rules.check_enrolment(_found(None, live="2025-2026-5A-01"), request)
    rules.check_enrolment(_found(None, live=INFO.record_id), request)
    rules.check_enrolment(_found(None, live="2025-2026-5A-01"), request, "2025-2026-5A-01")
    # A record already held (created before the rule) goes on through its stages
    held = Record(INFO, "signed_by_teacher", 1, "cd" * 32)
    rules.check_enrolment(
        _found(None, live="2025-2026-5A-01", record=held), _request(Stage.PRINCIPAL, "BGH-0001")
    )


def test_a_roster_decodes_only_under_its_own_school_and_with_each_class_once() -> None:
    body = (
        b'{"type": "hocba.roster.v1", "school_id": "31000123", "academic_year": "2025-2026",'
        b' "submission_round": 1, "classes": [{"class_name": "5A", "grade": 5,'
        b' "homeroom_teacher": "GV-0042", "students": 34}, {"class_name": "5B", "grade": 5,'
        b' "homeroom_teacher": "GV-0043", "students": 30}], "principals": ["BGH-0001"],'
        b' "sent_at": "2026-05-01T08:00:00+07:00"}'
    )
    assert decode_roster(body, "roster.31000123").expected_records == 64
    with pytest.raises(InvalidMessage, match="does not match school_id"):
        decode_roster(body, "roster.31000456")
    twice = body.replace(b'"5B"', b'"5A"')
    with pytest.raises(InvalidMessage, match="classes named more than once: 5A"):
        decode_roster(twice, "roster.31000123")
