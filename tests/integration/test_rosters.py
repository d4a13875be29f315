"""Rosters through the real broker and database: class binding, replacement, duplicates,
and refused rosters in their dead-letter queue."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest

from daemon.app import Running
from daemon.clock import vietnam_now
from daemon.dev import env as devenv
from daemon.messages import RecordInfo
from daemon.registry import commands
from daemon.registry.rosters import NOTIFY_CHANNEL
from daemon.settings import Settings
from daemon.stages import Stage
from producers.school_system import sample_pdf
from tests.integration.conftest import Published, SchoolSystem
from tests.integration.registry_fixtures import (
    PRINCIPAL,
    SEAL,
    TEACHERS,
    OwnSchool,
    new_school_id,
    provision_school,
)
from tests.services import StatusEvents, dead_letters

YEAR = "2025-2026"


@pytest.fixture(scope="module")
async def school(
    dev_env: devenv.DevEnv, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> OwnSchool:
    """A school registered as an operator would, before the daemon's workers start."""
    school_id = new_school_id()
    await provision_school(dev_env, school_id)
    base = tmp_path_factory.mktemp("roster-school")
    await commands.school_add(settings, school_id, "Trường Thử", "EdDSA", None, base / "key.pem")
    csv = base / "signers.csv"
    lines = [f"{t},homeroom_teacher" for t in TEACHERS] + [
        f"{PRINCIPAL},principal",
        f"{SEAL},school_seal",
    ]
    csv.write_text("signer_id,stage\n" + "\n".join(lines) + "\n")
    assert (await commands.signer_import(settings, csv, school_id))["applied"]
    return OwnSchool(school_id, base / "key.pem")


@pytest.fixture
async def rosters_stored(settings: Settings) -> AsyncIterator[asyncio.Queue[str]]:
    """Each school id whose roster a daemon instance has just stored (LISTEN, no polling)."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(settings.database.dsn)
    await conn.add_listener(NOTIFY_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    yield heard
    await conn.close()


def _roster(school_id: str, sent_at: datetime, teachers: dict[str, str], **extra: Any) -> bytes:
    classes = [
        {"class_name": name, "grade": int(name[0]), "homeroom_teacher": t, "students": 30 + n}
        for n, (name, t) in enumerate(sorted(teachers.items()))
    ]
    body = {
        "type": "hocba.roster.v1",
        "school_id": school_id,
        "academic_year": YEAR,
        "submission_round": 1,
        "classes": classes,
        "principals": [PRINCIPAL],
        "sent_at": sent_at.isoformat(),
        **extra,
    }
    return json.dumps(body).encode()


async def _send_roster(
    system: SchoolSystem, heard: asyncio.Queue[str], school_id: str, body: bytes
) -> None:
    await system.publish(f"roster.{school_id}", body, hashlib.sha256(body).hexdigest()[:32])
    async with asyncio.timeout(30):
        assert await heard.get() == school_id


class Teacher:
    """Starts records of one school's classes, as its school system would."""

    def __init__(self, system: SchoolSystem, school: OwnSchool) -> None:
        self.system, self.school, self.count = system, school, 0

    def record(self, class_name: str, student: str | None = None) -> RecordInfo:
        self.count += 1
        return RecordInfo(
            record_id=f"{YEAR}-{class_name}-{self.system.tag}-{self.count:03d}",
            student_id=student or f"{self.school.school_id}{self.system.tag}{self.count:03d}",
            academic_year=YEAR,
            grade=int(class_name[0]),
            class_name=class_name,
            submission_round=1,
        )

    async def start(self, info: RecordInfo, signer: str) -> Published:
        pdf = sample_pdf(info, "Trường Thử", pages=1)
        digest = hashlib.sha256(pdf).hexdigest()
        stage = Stage.HOMEROOM_TEACHER
        token = self.school.mint(signer, stage, info.record_id, digest)
        return await self.system.sign(
            self.school.school_id, info, stage, digest, pdf=pdf, signer=signer, consent=token
        )


async def _state(status: StatusEvents, sent: Published) -> tuple[str, str | None]:
    [event] = await status.wait(sent.request_id)
    return event["state"], (event["reason"] or {}).get("code")


async def test_the_latest_roster_binds_each_class_to_its_teacher_and_one_record_per_student(
    school: OwnSchool,
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    rosters_stored: asyncio.Queue[str],
    settings: Settings,
) -> None:
    s, (first, second) = school.school_id, TEACHERS
    teacher = Teacher(school_system, school)
    sent_at = vietnam_now()
    # Given a roster: 5A is GV-0001's class, 5B GV-0002's
    await _send_roster(
        school_system, rosters_stored, s, _roster(s, sent_at, {"5A": first, "5B": second})
    )

    # Then only a class's own teacher starts its records, and only classes it lists
    signed = teacher.record("5A")
    assert await _state(status, await teacher.start(signed, first)) == ("signed_by_teacher", None)
    not_theirs = await teacher.start(teacher.record("5A"), second)
    unlisted = await teacher.start(teacher.record("5C"), first)
    assert await _state(status, not_theirs) == ("rejected", "unauthorized")
    assert await _state(status, unlisted) == ("rejected", "unauthorized")
    # And a second record for the same student is refused, whoever signs it
    twin = await teacher.start(teacher.record("5A", student=signed.student_id), first)
    assert await _state(status, twin) == ("rejected", "duplicate_record")

    # When a later roster gives 5A to GV-0002, and an older one arrives after it
    newer = _roster(s, sent_at + timedelta(hours=1), {"5A": second, "5B": second})
    await _send_roster(school_system, rosters_stored, s, newer)
    older = _roster(s, sent_at - timedelta(hours=1), {"5A": first})
    await _send_roster(school_system, rosters_stored, s, older)

    # Then the later one holds: GV-0002 starts 5A's records, GV-0001 no longer does
    now_theirs = await teacher.start(teacher.record("5A"), second)
    no_longer = await teacher.start(teacher.record("5A"), first)
    assert await _state(status, now_theirs) == ("signed_by_teacher", None)
    assert await _state(status, no_longer) == ("rejected", "unauthorized")
    async with daemon.db.connection() as conn:
        held = await conn.fetchrow(
            "SELECT sent_at, expected_records FROM rosters WHERE school_id = $1", s
        )
        actions = await conn.fetch(
            """SELECT action FROM audit_log WHERE school_id = $1 AND action LIKE 'roster%'
               ORDER BY id""",
            s,
        )
    assert held["sent_at"] == sent_at + timedelta(hours=1)
    assert held["expected_records"] == 30 + 31
    assert [a["action"] for a in actions] == ["roster_stored", "roster_replaced", "roster_ignored"]
    letters = {m.message_id: m for m in await dead_letters(settings.amqp.url)}
    assert letters[twin.request_id].headers["x-hocba-reason-code"] == "duplicate_record"
    assert letters[not_theirs.request_id].headers["x-hocba-reason-code"] == "unauthorized"


async def test_a_refused_roster_lands_in_its_dead_letter_queue_with_its_reason(
    school: OwnSchool,
    daemon: Running,
    school_system: SchoolSystem,
    settings: Settings,
) -> None:
    s = school.school_id
    sent_at = vietnam_now()
    cases = {
        "unknown_signer": _roster(s, sent_at, {"5A": "GV-9999"}),
        "invalid_message": b'{"type": "hocba.roster.v1", "school_id": "' + s.encode() + b'"}',
        "unknown_school": _roster("39999999", sent_at, {"5A": TEACHERS[0]}),
    }
    keys = {"unknown_school": "roster.39999999"}
    sent = {}
    for code, body in cases.items():
        published = await school_system.publish(
            keys.get(code, f"roster.{s}"), body, f"roster-{code}"
        )
        sent[published.request_id] = code

    letters = await _dead_letters(settings.amqp.url, "hocba.roster.dead", len(sent))

    assert {m.message_id: m.headers["x-hocba-reason-code"] for m in letters} == sent
    for message in letters:
        assert len(str(message.headers["x-hocba-reason-message"])) > 10
    async with daemon.db.connection() as conn:
        refused = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'roster_refused' AND school_id = $1", s
        )
    assert refused == 2


async def _dead_letters(
    url: str, queue: str, count: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The first `count` messages that arrive in `queue` (acknowledged), as they arrive."""
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    enough = asyncio.Event()

    async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        taken.append(message)
        if len(taken) >= count:
            enough.set()

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(queue)
        await dlq.consume(take)
        async with asyncio.timeout(60):
            await enough.wait()
    return taken
