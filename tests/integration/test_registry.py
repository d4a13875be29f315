"""The registry commands against the real PostgreSQL and the session's SoftHSM token."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from daemon import records
from daemon.clock import vietnam_now
from daemon.consent import Subject
from daemon.dev import env as devenv
from daemon.errors import CertificateInvalid, Unauthorized, UnknownSigner
from daemon.registry import commands, keyring
from daemon.settings import Settings
from daemon.stages import Stage
from tests.integration.registry_fixtures import (
    EXPIRED,
    MISMATCH,
    PRINCIPAL,
    SEAL,
    TEACHERS,
    OwnSchool,
    new_school_id,
    provision_school,
)


@pytest.fixture(scope="module")
async def school(
    dev_env: devenv.DevEnv, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> OwnSchool:
    school_id = new_school_id()
    await provision_school(dev_env, school_id)
    key_file = tmp_path_factory.mktemp("consent") / "school.pem"
    await commands.school_add(settings, school_id, "Trường Tiểu học Thử", "EdDSA", None, key_file)
    return OwnSchool(school_id, key_file)


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(settings.database.dsn)
    yield connection
    await connection.close()


def _csv(tmp_path: Path, school_id: str, rows: list[str]) -> Path:
    path = tmp_path / "signers.csv"
    path.write_text(
        "school_id,signer_id,stage,ho_ten\n" + "".join(f"{school_id},{r}\n" for r in rows)
    )
    return path


async def test_an_import_with_bad_lines_applies_nothing_and_names_each_line(
    school: OwnSchool, settings: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Given a CSV whose lines 4, 5, 6, 8 and 9 are wrong in five ways
    s = school.school_id
    path = _csv(
        tmp_path,
        s,
        [
            f"{TEACHERS[0]},homeroom_teacher,Nguyễn Văn A",  # line 2
            f"{TEACHERS[1]},GVCN,Trần Thị B",
            "GV-0042,homeroom_teacher,Lê Văn C",  # line 4: nothing in the token
            f"{MISMATCH},homeroom_teacher,",  # line 5: a certificate for another key
            f"{EXPIRED},homeroom_teacher,",  # line 6: expired
            f"{PRINCIPAL},principal,",
            f"{TEACHERS[0]},principal,",  # line 8: twice
            f"{SEAL},principal,",  # line 9: a seal certificate registered as a principal
        ],
    )

    # When it is imported
    report = await commands.signer_import(settings, path, None)

    # Then nothing is applied, and each bad line is named with its signer and reason
    assert report["applied"] is False
    assert [(e["line"], e["code"]) for e in report["errors"]] == [
        (4, "unknown_signer"),
        (5, "certificate_invalid"),
        (6, "certificate_invalid"),
        (8, "invalid_message"),
        (9, "certificate_invalid"),
    ]
    messages = [e["message"] for e in report["errors"]]
    assert messages[0] == f"line 4: signer GV-0042: no key labelled {s}/GV-0042 in the token"
    assert (
        f"under {s}/{MISMATCH} is for another key than the one labelled {s}/{MISMATCH}"
        in (messages[1])
    )
    assert "expired on" in messages[2]
    assert messages[3] == f"line 8: signer {TEACHERS[0]}: appears again (first on line 2)"
    assert "names role school_seal, not principal" in messages[4]
    assert await conn.fetchval("SELECT count(*) FROM signers WHERE school_id = $1", s) == 0
    actions = await conn.fetch("SELECT action FROM audit_log WHERE school_id = $1", s)
    assert [a["action"] for a in actions] == ["school_added"]


async def test_the_command_line_prints_the_lines_and_exits_1(
    school: OwnSchool, dev_env: devenv.DevEnv, tmp_path: Path
) -> None:
    path = _csv(tmp_path, school.school_id, ["GV-0042,homeroom_teacher,"])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "--config", str(dev_env.config_path),
        "signer", "import", "--csv", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 1
    s = school.school_id
    assert f"line 2: signer GV-0042: no key labelled {s}/GV-0042 in the token" in err.decode()
    assert "1 of 1 lines refused; nothing was applied." in out.decode()


async def test_a_clean_import_registers_each_signer_once_and_audits_it(
    school: OwnSchool, settings: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    s = school.school_id
    rows = [f"{t},homeroom_teacher," for t in TEACHERS]
    rows += [f"{PRINCIPAL},principal,", f"{SEAL},DauTruong,"]
    path = _csv(tmp_path, s, rows)

    first = await commands.signer_import(settings, path, None)
    again = await commands.signer_import(settings, path, s)

    assert (first["applied"], first["added"], first["updated"]) == (True, 4, 0)
    assert (again["applied"], again["added"], again["unchanged"]) == (True, 0, 4)
    listed = await commands.signer_list(settings, s, None, inactive=False)
    assert sorted((g["signer_id"], g["stage"]) for g in listed["signers"]) == [
        (PRINCIPAL, "principal"),
        (TEACHERS[0], "homeroom_teacher"),
        (TEACHERS[1], "homeroom_teacher"),
        (SEAL, "school_seal"),
    ]
    added = await conn.fetch(
        "SELECT detail FROM audit_log WHERE school_id = $1 AND action = 'signer_added'", s
    )
    assert sorted(json.loads(a["detail"])["signer_id"] for a in added) == sorted(
        [*TEACHERS, PRINCIPAL, SEAL]
    )

    # A deactivated signer stays so when the CSV is imported again
    done = await commands.signer_deactivate(settings, s, TEACHERS[1], "left the school")
    assert done["changed"] is True
    await commands.signer_import(settings, path, s)
    listed = await commands.signer_list(settings, s, Stage.HOMEROOM_TEACHER, inactive=True)
    assert {g["signer_id"]: g["active"] for g in listed["signers"]} == {
        TEACHERS[0]: True,
        TEACHERS[1]: False,
    }
    shown = await commands.school_show(settings, s)
    assert shown["signers"]["homeroom_teacher"] == {
        "active": 1,
        "deactivated": 1,
        "soonest_expiry": shown["signers"]["homeroom_teacher"]["soonest_expiry"],
    }
    reactivated = await commands.signer_add(
        settings, s, TEACHERS[1], Stage.HOMEROOM_TEACHER, reactivate=True
    )
    assert (reactivated["change"], reactivated["active"]) == ("updated", True)


async def test_signer_add_refuses_a_certificate_that_is_not_for_its_key(
    school: OwnSchool, settings: Settings
) -> None:
    s = school.school_id
    with pytest.raises(CertificateInvalid, match="is for another key than the one labelled"):
        await commands.signer_add(settings, s, MISMATCH, Stage.HOMEROOM_TEACHER)
    with pytest.raises(UnknownSigner, match=f"no key labelled {s}/GV-0099 in the token"):
        await commands.signer_add(settings, s, "GV-0099", Stage.HOMEROOM_TEACHER)


async def test_a_rotated_key_counts_until_its_grace_period_ends(
    school: OwnSchool, settings: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Given a consent minted with the school's first key
    s = school.school_id
    subject = Subject(s, TEACHERS[0], "2025-2026-5A-99", "homeroom_teacher", "ab" * 32)
    old_token = school.mint(
        TEACHERS[0], Stage.HOMEROOM_TEACHER, subject.record_id, subject.digest, ttl_s=4 * 3600
    )
    rotated_at = vietnam_now()

    # When the key is rotated with a grace period of 2 hours
    new_key = tmp_path / "new.pem"
    done = await commands.consent_key_rotate(
        settings, s, "EdDSA", None, new_key, timedelta(hours=2), clock=lambda: rotated_at
    )
    valid_until = datetime.fromisoformat(done["previous_key"]["valid_until"])
    assert valid_until == rotated_at + timedelta(hours=2)
    found = await records.lookup(conn, uuid.uuid4(), s, TEACHERS[0], subject.record_id)
    assert found.school is not None
    current, retired = found.school.consent_key, found.school.retired_keys

    # Then, as the daemon checks it: the old key's consent counts within the grace period
    within = rotated_at + timedelta(hours=1, minutes=59)
    assert keyring.verify(old_token, current, retired, subject, within)["sub"] == TEACHERS[0]
    # and the new key's too
    new_token = school.mint(
        TEACHERS[0],
        Stage.HOMEROOM_TEACHER,
        subject.record_id,
        subject.digest,
        key=new_key,
        ttl_s=4 * 3600,
    )
    assert keyring.verify(new_token, current, retired, subject, within)["sub"] == TEACHERS[0]
    # but no longer once it ended
    after = rotated_at + timedelta(hours=2, seconds=1)
    with pytest.raises(Unauthorized, match="grace period ended"):
        keyring.verify(old_token, current, retired, subject, after)
    audited = await conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE school_id = $1 AND action = 'consent_key_rotated'",
        s,
    )
    assert audited == 1
