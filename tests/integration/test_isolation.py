"""A school's request can never make another school's key sign: consent, routing key,
signer registry, batch consent, the database constraint and the HSM pool's KeyRef check
each stop it on their own."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest

from daemon.blobs import FsStore
from daemon.database import Database
from daemon.dev import env as devenv
from daemon.documents import DocumentSource
from daemon.errors import InvalidMessage, Unauthorized
from daemon.hsm import KeyRef, SigningPool, SignJob, SignResult
from daemon.messages import decode_sign_request
from daemon.pipeline import Pipeline
from daemon.settings import Settings
from daemon.stages import Stage
from producers.school_system import sample_pdf, sample_record, sign_request
from tests.integration import extras

A, B = extras.SCHOOL, extras.OTHER
T, P = Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL


@dataclass
class RecordingSigning:
    """A Signing that records every key it is asked to use, and signs nothing real."""

    keys: list[KeyRef] = field(default_factory=list)
    keeps = False  # the pipeline reads and stores each PDF itself

    async def sign_many(self, jobs: Sequence[SignJob]) -> list[SignResult | Exception]:
        return [await self.sign(job) for job in jobs]

    async def sign(self, job: SignJob) -> SignResult:
        self.keys.append(job.key)
        pdf = job.pdf + b"\n%signed " + job.key.key_label.encode()
        return SignResult(
            pdf=pdf,
            size=len(pdf),
            sha256=hashlib.sha256(pdf).hexdigest(),
            input_size=len(job.pdf),
            cert_serial="1",
            signer_subject="fake",
            signed_at=datetime.now(UTC),
            hsm_seconds=0.0,
        )


@dataclass
class Harness:
    env: devenv.DevEnv
    pipeline: Pipeline
    signing: RecordingSigning
    count: int = 0

    def record(self, school: str):
        self.count += 1
        import random

        info = sample_record(random.Random(), school, uuid.uuid4().hex[:6], self.count)
        return info, sample_pdf(info, "iso", pages=1)

    async def send(
        self,
        school: str,
        info,
        stage: Stage,
        digest: str,
        *,
        pdf: bytes | None = None,
        signer: str | None = None,
        consent_by: str | None = None,
        recs: list[tuple[str, str]] | None = None,
        routing_key: str | None = None,
    ) -> str:
        """The outcome's state or reason code; the decode step included."""
        signer = signer or self.env.signer_for(school, stage.value)
        token = self.env.consent_signer(consent_by or school).mint(
            signer, stage, recs or [(info.record_id, digest)]
        )
        key, body, _ = sign_request(school, info, stage, signer, token, pdf)
        try:
            request = decode_sign_request(body, routing_key or key)
        except InvalidMessage as exc:
            return exc.code
        outcome = await self.pipeline.handle(request)
        event = outcome.event
        return event.reason.code if event.reason else event.state.value


@pytest.fixture
async def harness(dev_env: devenv.DevEnv, settings: Settings, tmp_path) -> AsyncIterator[Harness]:
    await extras.provision_extras(dev_env)
    db = Database(settings.database)
    await db.open()
    signing = RecordingSigning()
    async with aiohttp.ClientSession() as http:
        documents = DocumentSource(http, settings.signing)
        yield Harness(
            dev_env, Pipeline(db, signing, FsStore(tmp_path / "docs"), documents), signing
        )
    await db.close()


async def test_every_path_keeps_a_request_on_its_own_schools_keys(harness: Harness) -> None:
    # Given a record of school A signed by its teacher, and one of school B
    a_info, a_pdf = harness.record(A)
    a_digest = hashlib.sha256(a_pdf).hexdigest()
    assert await harness.send(A, a_info, T, a_digest, pdf=a_pdf) == "signed_by_teacher"
    a_current = (
        harness.signing.keys
        and hashlib.sha256(a_pdf + b"\n%signed " + f"{A}/GV-0001".encode()).hexdigest()
    )
    b_info, b_pdf = harness.record(B)
    b_digest = hashlib.sha256(b_pdf).hexdigest()

    # When school A's requests try every path towards school B's keys
    attempts = {
        "consent minted by B for A's record": await harness.send(
            A, a_info, P, a_current, consent_by=B
        ),
        "A's consent for B's record": await harness.send(
            B, b_info, T, b_digest, pdf=b_pdf, consent_by=A
        ),
        "routing key of A, body of B": await harness.send(
            B, b_info, T, b_digest, pdf=b_pdf, routing_key=f"sign.{A}"
        ),
        "signer registered only at B": await harness.send(
            A, harness.record(A)[0], T, a_digest, pdf=a_pdf, signer=extras.ONLY_AT_OTHER
        ),
        "B's signer id with B's key label": await harness.send(
            A, a_info, P, a_current, signer=f"{B}/BGH-0001"
        ),
        "B's batch consent covering A's record": await harness.send(
            A, a_info, P, a_current, consent_by=B, recs=[(a_info.record_id, a_current), ("x", "y")]
        ),
    }
    # Then each is refused, and only A's teacher key was ever used
    assert attempts == {
        "consent minted by B for A's record": "unauthorized",
        "A's consent for B's record": "unauthorized",
        "routing key of A, body of B": "invalid_message",
        "signer registered only at B": "unknown_signer",
        "B's signer id with B's key label": "invalid_message",
        "B's batch consent covering A's record": "unauthorized",
    }
    assert harness.signing.keys == [KeyRef(A, devenv.TOKEN_LABEL, f"{A}/GV-0001")]

    # And legitimate requests of each school use that school's keys only
    assert await harness.send(A, a_info, P, a_current) == "signed_by_principal"
    assert await harness.send(B, b_info, T, b_digest, pdf=b_pdf) == "signed_by_teacher"
    for key in harness.signing.keys:
        assert key.key_label.startswith(f"{key.school_id}/")
    assert [k.school_id for k in harness.signing.keys] == [A, A, B]


async def test_the_registry_refuses_a_key_label_of_another_school(
    dev_env: devenv.DevEnv,
) -> None:
    conn = await asyncpg.connect(dev_env.settings.database.dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                """INSERT INTO signers (school_id, signer_id, stage, token_label, key_label,
                                        cert_serial, cert_not_after)
                   VALUES ($1, 'X-BORROW', 'school_seal', $2, $3, '1', now())""",
                A,
                devenv.TOKEN_LABEL,
                f"{B}/SEAL",
            )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "key",
    [
        KeyRef(A, devenv.TOKEN_LABEL, f"{B}/SEAL"),
        KeyRef(A, devenv.TOKEN_LABEL, f"{A}0/SEAL"),
        KeyRef(A, devenv.TOKEN_LABEL, f"{A}/"),
        KeyRef("", devenv.TOKEN_LABEL, "/SEAL"),
        KeyRef(A, "another-token", f"{A}/SEAL"),
    ],
    ids=["other-school", "longer-school-id", "no-signer", "no-school", "other-token"],
)
async def test_the_hsm_pool_refuses_a_key_outside_the_school(
    settings: Settings, homeroom_pdf: bytes, key: KeyRef
) -> None:
    pool = SigningPool(settings.hsm.model_copy(update={"workers": 1}), settings.signing)
    await pool.start()
    try:
        with pytest.raises(Unauthorized):
            await pool.sign(SignJob(homeroom_pdf, T, key))
        with pytest.raises(Unauthorized):
            await pool.certificate(key)
        with pytest.raises(Unauthorized):
            await pool.sign_cms(key, b"manifest", datetime.now(UTC))
    finally:
        await pool.close()


async def signature_owners(dsn: str) -> list[tuple[str, str, str]]:
    """Signatures whose certificate is not the one registered for that school's signer."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT s.school_id, s.record_id, s.signer_id FROM signatures s
               JOIN signers g USING (school_id, signer_id)
               WHERE g.cert_serial <> s.cert_serial
                  OR NOT starts_with(g.key_label, s.school_id || '/')"""
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]
