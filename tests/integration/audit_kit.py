"""A trail to verify: its own database, records stored by the daemon's own statement.

Migrated as the admin, written through the real store statement and trigger, documents
in a real file store; anchors timestamped by the dev TSA over HTTP.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from asn1crypto import x509

from daemon import migrate, record_store
from daemon.audit import anchors, verify
from daemon.blobs import FsStore
from daemon.dev import env as devenv
from daemon.ltv.timestamps import TsaClient
from daemon.messages import RecordInfo, StatusEvent
from daemon.stages import ORDER, Stage
from tests import services
from tests.pki_services_fixtures import ServicedHsm

SCHOOL, OTHER = "31000901", "31000902"


@dataclass
class Trail:
    conn: asyncpg.Connection
    store: FsStore
    roots: list[x509.Certificate]
    tsa: TsaClient
    dsn: str  # the trail's own database

    async def issue(self, school: str, record_id: str) -> list[str]:
        """A record through all three stages, by the daemon's own store statement."""
        before = await self.store.put(f"%PDF-1.7 record {school}/{record_id}".encode())
        digests = [before]
        for stage in ORDER:
            after = await self.store.put(f"{digests[-1]} signed at {stage.value}".encode())
            signer = f"{school}-{stage.value}"
            await store_stage(self.conn, school, record_id, stage, signer, digests[-1], after)
            digests.append(after)
        return digests

    async def anchor(self) -> None:
        async with self.conn.transaction():
            await anchors.anchor(self.conn, self.tsa, "manual")

    async def verify(self, school: str | None = None) -> verify.Report:
        return await verify.verify(self.conn, self.store, self.roots, school_id=school)

    async def as_superuser(self, sql: str, *args: object) -> None:
        """What a superuser can do that the daemon's role cannot: triggers off, then SQL."""
        async with self.conn.transaction():
            await self.conn.execute("SET LOCAL session_replication_role = replica")
            await self.conn.execute(sql, *args)


@pytest.fixture
async def trail(tmp_path: Path, serviced_hsm: ServicedHsm) -> AsyncIterator[Trail]:
    async with services.scratch_database("hocba_audit") as (dsn, conn):
        await migrate.migrate(conn)
        for school in (SCHOOL, OTHER):
            await devenv.register_school(conn, school, "HS256", b"k" * 32)
            await conn.executemany(
                """INSERT INTO signers (school_id, signer_id, stage, token_label, key_label,
                                        cert_serial, cert_not_after)
                   VALUES ($1, $2, $3, 't', $1 || '/' || $2, '0a1b', now() + interval '1 year')""",
                [(school, f"{school}-{stage.value}", stage.value) for stage in ORDER],
            )
        async with aiohttp.ClientSession() as client:
            tsa = TsaClient(client, serviced_hsm.signing())
            store, roots = FsStore(tmp_path / "documents"), serviced_hsm.dev.trust_roots
            yield Trail(conn, store, roots, tsa, dsn)


def codes(report: verify.Report) -> list[tuple[str, str, int | None]]:
    """Each break as (code, chain, seq): what the tests compare."""
    return [(b.code, b.chain, b.seq) for b in report.breaks]


def stage_signed(
    school: str, record_id: str, stage: Stage, signer_id: str, before: str, after: str
) -> tuple[record_store.NewSignature, StatusEvent]:
    """A stage's signature of a record and its status event, as the pipeline builds them."""
    info = RecordInfo(
        record_id=record_id,
        student_id=f"S-{record_id}",
        academic_year="2025-2026",
        grade=5,
        class_name="5A",
        submission_round=1,
    )
    signature = record_store.NewSignature(
        request_id=uuid.uuid4(),
        school_id=school,
        info=info,
        stage=stage,
        signer_id=signer_id,
        cert_serial="0a1b",
        signed_at=datetime.now(UTC),
        digest_before=before,
        digest_after=after,
        size_before=10,
        size_after=20,
        fingerprint=secrets.token_hex(8),
    )
    event = StatusEvent(
        event_id=uuid.uuid4(),
        request_id=signature.request_id,
        school_id=school,
        record_id=record_id,
        state=stage.state,
        stage=stage,
        document_sha256=after,
        signatures=stage.position,
        reason=None,
        at=signature.signed_at,
    )
    return signature, event


async def store_stage(
    conn: asyncpg.Connection,
    school: str,
    record_id: str,
    stage: Stage,
    signer_id: str,
    before: str,
    after: str,
) -> None:
    """One stage of a record signed, stored by the daemon's own statement (with its
    `signed` entry and status event), as the pipeline stores it."""
    signature, event = stage_signed(school, record_id, stage, signer_id, before, after)
    await record_store.store_signature(conn, signature, event)
