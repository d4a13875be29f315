"""LTV renewal of a real B-LTA record, and validation decades on with no network."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from daemon import migrate
from daemon.blobs import FsStore
from daemon.database import Database
from daemon.dev import env as devenv
from daemon.dev import pki_services
from daemon.dev.pki import SIGNER_VALIDITY
from daemon.ltv.dss import horizon
from daemon.ltv.renewal import Renewer, Shown
from daemon.ltv.status import CertificateStatus, DatabaseStatusCache
from daemon.ltv.timestamps import TsaClient
from daemon.pdf.pades import read_pdf
from daemon.settings import DatabaseSettings, LtvSettings
from daemon.verification.evidence import evidence_of_async
from tests import services
from tests.pki_services_fixtures import *  # noqa: F403
from tests.pki_services_fixtures import SERVICED_SCHOOL, ServicedHsm, free_port

pytestmark = pytest.mark.integration

# The TSA that timestamps at issuance lives 4 years: past the signers' 3, so that a
# validation can fall after every signer's certificate and before it, or after both.
FIRST_TSA_VALIDITY = timedelta(days=4 * 365)


@contextlib.asynccontextmanager
async def _short_lived_tsa(serviced: ServicedHsm, base: Path) -> AsyncIterator[str]:
    """A second TSA of the same issuing CA, with a 4-year certificate; its URL."""
    pki = base / "pki"
    pki.mkdir()
    for name in ("root.pem", "issuing.pem", "issuing.key", "root.key", "services.json"):
        shutil.copy(serviced.pki / name, pki / name)
    pki_services.ensure_tsa(pki, FIRST_TSA_VALIDITY)
    app, _ = pki_services.build_app(pki, pki_services.ServicesConfig("http://127.0.0.1"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/tsa"
    finally:
        await runner.cleanup()


@pytest.fixture
async def database(run_id: str) -> AsyncIterator[Database]:
    name = f"hocba_test_{run_id}_ltv"
    dsn = services.dsn(name)
    await devenv.ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    db = Database(DatabaseSettings(dsn=dsn))
    await db.open()
    try:
        yield db
    finally:
        await db.close()
        await services.drop_database(name)


async def _issue(
    serviced: ServicedHsm, pdf: bytes, tsa_url: str, status: CertificateStatus, session
):  # type: ignore[no-untyped-def]
    return await serviced.issue(pdf, serviced.signing("B-LTA", tsa_url=tsa_url), session, status)


async def _register(db: Database, pdf: bytes, before: bytes) -> str:
    """The issued record as the pipeline leaves it: the record row and its versions."""
    digest = hashlib.sha256(pdf).hexdigest()
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO schools (school_id, name, consent_alg, consent_key) "
            "VALUES ($1, 'Test school', 'HS256', $2) ON CONFLICT DO NOTHING",
            SERVICED_SCHOOL,
            b"k" * 32,
        )
        await conn.execute(
            "INSERT INTO records (school_id, record_id, student_id, academic_year, grade, "
            "class_name, submission_round, state, signatures, current_sha256) "
            "VALUES ($1, 'R-1', 'S-1', '2025-2026', 5, '5A', 1, 'issued', 3, $2)",
            SERVICED_SCHOOL,
            digest,
        )
        await conn.executemany(
            "INSERT INTO record_versions (school_id, record_id, version, sha256, size_bytes) "
            "VALUES ($1, 'R-1', $2, $3, $4)",
            [
                (SERVICED_SCHOOL, 0, hashlib.sha256(before).hexdigest(), len(before)),
                (SERVICED_SCHOOL, 3, digest, len(pdf)),
            ],
        )
    return digest


def _offline_lta_spec(roots):  # type: ignore[no-untyped-def]
    """test_levels' LTA spec, but believing the embedded status answers for years:
    offline, nobody can fetch fresher ones, so the timestamps must carry the proof."""
    import dataclasses

    from pyhanko_certvalidator.policy_decl import CertRevTrustPolicy, FreshnessReqType

    from tests.integration.test_levels import _lta_spec

    spec = _lta_spec(roots)
    signature = spec.signature_validation_spec
    policy = signature.cert_validation_policy
    revinfo = CertRevTrustPolicy(
        policy.revinfo_policy.revocation_checking_policy,
        freshness=timedelta(days=20 * 365),
        freshness_req_type=FreshnessReqType.MAX_DIFF_REVOCATION_VALIDATION,
    )
    policy = dataclasses.replace(policy, revinfo_policy=revinfo)
    signature = dataclasses.replace(signature, cert_validation_policy=policy)
    return dataclasses.replace(spec, signature_validation_spec=signature)


async def _validates_at(pdf: bytes, roots, moment: datetime) -> list[bool]:  # type: ignore[no-untyped-def]
    """pyHanko's LTA validation of each signature at `moment`, from the file alone."""
    from pyhanko.sign.ades.report import AdESPassed
    from pyhanko.sign.validation.ades import ades_lta_validation
    from pyhanko_certvalidator.context import ValidationTimingInfo

    timing = ValidationTimingInfo(moment, moment, point_in_time_validation=False)
    results = []
    for sig in read_pdf(pdf).embedded_regular_signatures:
        result = await ades_lta_validation(sig, _offline_lta_spec(roots), timing_info=timing)
        results.append(result.ades_subindic is AdESPassed.OK)
    return results


async def test_renewal_keeps_a_record_valid_past_its_first_tsa(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, database: Database, tmp_path: Path
) -> None:
    roots = serviced_hsm.dev.trust_roots
    now = datetime.now(UTC)
    signers_expired = now + SIGNER_VALIDITY + timedelta(days=30)
    first_tsa_expired = now + FIRST_TSA_VALIDITY + timedelta(days=30)
    store = FsStore(tmp_path / "documents")
    async with aiohttp.ClientSession() as session, _short_lived_tsa(serviced_hsm, tmp_path) as url:
        settings = serviced_hsm.signing("B-LTA")
        status = CertificateStatus(session, DatabaseStatusCache(database), settings)
        # Given a record issued at B-LTA, timestamped by a TSA whose certificate ends in 4 years
        issued = await _issue(serviced_hsm, homeroom_pdf, url, status, session)
        await store.put(issued)
        digest = await _register(database, issued, homeroom_pdf)

        # Then, after every signer's certificate expired, it still validates from the file
        # alone, thanks to its timestamps; but not once the first TSA's certificate expired
        assert await _validates_at(issued, roots, signers_expired) == [True] * 3
        assert await _validates_at(issued, roots, first_tsa_expired) == [False] * 3

        # When `ltv renew` runs with a horizon past that TSA's expiry, with the district's TSA
        renewer = Renewer(
            database,
            store,
            status,
            TsaClient(session, settings),
            roots,
            LtvSettings(max_per_minute=600),
        )
        progress = io.StringIO()
        within = FIRST_TSA_VALIDITY.days + 1
        summary = await renewer.run(within, SERVICED_SCHOOL, Shown(progress))
        # and again: nothing is due any more
        again = await renewer.run(within, SERVICED_SCHOOL)

    assert (summary.due, summary.renewed, summary.failed) == (1, 1, 0)
    assert (again.due, again.renewed) == (0, 0)
    assert "1/1 31000777/R-1 renewed" in progress.getvalue()
    async with database.connection() as conn:
        current = await conn.fetchval("SELECT current_sha256 FROM records WHERE record_id = 'R-1'")
        versions = await conn.fetch(
            "SELECT version, sha256 FROM record_versions WHERE record_id = 'R-1' ORDER BY version"
        )
        audit = await conn.fetch("SELECT action, detail FROM audit_log WHERE record_id = 'R-1'")
    renewed = await store.get(current)

    # Then the renewal is a new version of the same record, with an audit entry
    assert current != digest
    assert [(v["version"], v["sha256"]) for v in versions][1:] == [(3, digest), (4, current)]
    assert [a["action"] for a in audit] == ["ltv_renewed"]
    # whose content and signatures are untouched: the issued bytes, then one more update
    assert renewed.startswith(issued)
    assert len(read_pdf(renewed).embedded_timestamp_signatures) == 2
    # and its newest timestamp now lasts as long as the district TSA's certificate
    first, second = horizon(issued), horizon(renewed)
    assert first.expires_at is not None and second.expires_at is not None
    assert second.expires_at > first_tsa_expired > first.expires_at
    # and it validates, from the file alone, after the first TSA's certificate expired
    assert await _validates_at(renewed, roots, first_tsa_expired) == [True] * 3
    # and the verification report still shows each signature's trusted time then, by the
    # chain of document timestamps, where the record before the renewal shows none
    later = await evidence_of_async(renewed, roots, first_tsa_expired)
    assert all(e.timestamp_at is not None for e in later), later
    assert [e.timestamp_at for e in later] == [
        e.timestamp_at for e in await evidence_of_async(issued, roots)
    ]
    unrenewed = await evidence_of_async(issued, roots, first_tsa_expired)
    assert [e.timestamp_at for e in unrenewed] == [None] * 3
