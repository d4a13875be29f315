"""Signature levels B-T and B-LTA against the real token and the dev TSA, OCSP and CRL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import aiohttp
import pytest
from asn1crypto import cms

from daemon.dev import pki_services
from daemon.errors import (
    CertificateRevoked,
    CertificateStatusUnavailable,
    TsaUnavailable,
    UnknownSigner,
)
from daemon.hsm import SigningPool, SignJob, SignResult
from daemon.ltv.levels import LeveledSigning
from daemon.ltv.status import CertificateStatus
from daemon.ltv.timestamps import TsaClient, contents_slot, signed_cms
from daemon.pdf.pades import read_pdf
from daemon.pdf.validation import validate_pdf_async
from daemon.stages import ORDER, Stage
from tests.pki_services_fixtures import *  # noqa: F403
from tests.pki_services_fixtures import SERVICED_SCHOOL, MemoryStatusCache, ServicedHsm

pytestmark = pytest.mark.integration


async def _pool(serviced: ServicedHsm, level: str) -> SigningPool:
    pool = SigningPool(serviced.dev.settings(1), serviced.signing(level))
    await pool.start()
    return pool


async def _issue(
    serviced: ServicedHsm,
    level: str,
    pdf: bytes,
    session: aiohttp.ClientSession,
    cache: MemoryStatusCache,
    stages: tuple[Stage, ...] = ORDER,
) -> bytes:
    settings = serviced.signing(level)
    status = CertificateStatus(session, cache, settings)
    return await serviced.issue(pdf, settings, session, status, stages=stages)


def _timestamp_tokens(pdf: bytes) -> list[cms.ContentInfo]:
    tokens = []
    for sig in read_pdf(pdf).embedded_regular_signatures:
        for attr in sig.signer_info["unsigned_attrs"] or []:
            if attr["type"].native == "signature_time_stamp_token":
                tokens.extend(attr["values"])
    return tokens


def _lta_spec(roots):  # type: ignore[no-untyped-def]
    """An LTA validation that may use only what the file holds: no fetching at all."""
    from pyhanko.sign.validation.policy_decl import (
        PdfSignatureValidationSpec,
        RevinfoOnlineFetchingRule,
        RevocationInfoGatheringSpec,
        SignatureValidationSpec,
    )
    from pyhanko_certvalidator.context import CertValidationPolicySpec
    from pyhanko_certvalidator.policy_decl import (
        CertRevTrustPolicy,
        RevocationCheckingPolicy,
        RevocationCheckingRule,
    )
    from pyhanko_certvalidator.registry import SimpleTrustManager

    # Every signer's (and TSA's) certificate needs revocation data; the issuing CA,
    # which names no status source, is checked only if it did.
    revocation = RevocationCheckingPolicy(
        ee_certificate_rule=RevocationCheckingRule.CRL_OR_OCSP_REQUIRED,
        intermediate_ca_cert_rule=RevocationCheckingRule.CHECK_IF_DECLARED,
    )
    policy = CertValidationPolicySpec(
        trust_manager=SimpleTrustManager.build(trust_roots=roots),
        revinfo_policy=CertRevTrustPolicy(revocation),
    )
    gathering = RevocationInfoGatheringSpec(
        online_fetching_rule=RevinfoOnlineFetchingRule.LOCAL_ONLY
    )
    return PdfSignatureValidationSpec(
        SignatureValidationSpec(cert_validation_policy=policy, revinfo_gathering_policy=gathering)
    )


async def test_b_lta_record_validates_with_no_network(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, status_checker, tmp_path: Path
) -> None:
    from pyhanko.sign.ades.report import AdESPassed
    from pyhanko.sign.validation.ades import ades_lta_validation

    # Given the dev PKI services, and a record signed through its three stages at B-LTA
    session, cache = status_checker
    before = serviced_hsm.running.counts
    issued = await _issue(serviced_hsm, "B-LTA", homeroom_pdf, session, cache)
    used = {k: v - before[k] for k, v in serviced_hsm.running.counts.items()}

    # When every service is down, so that nothing can be fetched
    serviced_hsm.running.set_down("ocsp", "crl", "tsa")
    try:
        reader = read_pdf(issued)
        signatures = reader.embedded_regular_signatures
        results = [
            await ades_lta_validation(s, _lta_spec(serviced_hsm.dev.trust_roots))
            for s in signatures
        ]
    finally:
        serviced_hsm.running.set_down()

    # Then pyHanko's LTA validation accepts each signature from the embedded data alone
    assert [s.field_name for s in signatures] == ["GVCN", "HieuTruong", "DauTruong"]
    assert len(reader.embedded_timestamp_signatures) == 1
    for result in results:
        assert result.ades_subindic is AdESPassed.OK, result.ades_subindic
        assert result.api_status is not None and result.api_status.bottom_line
        assert result.oldest_evidence_record_timestamp is not None
    # and it took 3 signature timestamps, 1 document timestamp, one OCSP answer per
    # certificate (3 signers, the TSA) and the root's CRL (for the issuing CA): every
    # other status came from the cache
    assert used == {"tsa": 4, "ocsp": 4, "crl": 1}
    # and poppler's pdfsig shows the document timestamp by the TSA, covering the file
    (tmp_path / "issued.pdf").write_bytes(issued)
    shown = subprocess.run(  # noqa: ASYNC221 - a short check, nothing else runs
        ["pdfsig", str(tmp_path / "issued.pdf")], capture_output=True, text=True, check=False
    )
    last = shown.stdout.split("Signature #4:")[1]
    assert "Signature Field Name: DocTimeStamp" in last
    assert "Signer Certificate Common Name: Hocba Dev TSA" in last
    assert "Total document signed" in last
    assert shown.stdout.count("Signature Validation: Signature is Valid.") == 3
    # and each signature carries its own signature timestamp
    assert len(_timestamp_tokens(issued)) == 3
    # and the daemon's own report still sees three intact, trusted signatures
    reports = await validate_pdf_async(issued, serviced_hsm.dev.trust_roots, expected=3)
    assert all(r.intact and r.valid and r.trusted for r in reports)
    assert issued.startswith(homeroom_pdf)
    # and openssl accepts the document timestamp's token over the bytes its range covers
    _assert_openssl_verifies_document_timestamp(serviced_hsm, issued, tmp_path)


def _assert_openssl_verifies_document_timestamp(
    serviced: ServicedHsm, issued: bytes, tmp_path: Path
) -> None:
    (stamp,) = read_pdf(issued).embedded_timestamp_signatures
    start, first, second, rest = stamp.sig_object["/ByteRange"]
    assert start == 0 and second + rest == len(issued)
    (tmp_path / "covered.bin").write_bytes(issued[:first] + issued[second : second + rest])
    token = cms.ContentInfo.load(stamp.pkcs7_content, strict=False).dump()
    (tmp_path / "doc_token.der").write_bytes(token)
    chain = (serviced.pki / "root.pem").read_text() + (serviced.pki / "issuing.pem").read_text()
    (tmp_path / "chain.pem").write_text(chain)
    verified = subprocess.run(
        ["openssl", "ts", "-verify", "-token_in", "-in", str(tmp_path / "doc_token.der"),
         "-data", str(tmp_path / "covered.bin"), "-CAfile", str(tmp_path / "chain.pem"),
         "-untrusted", serviced.tsa_pem],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0 and "Verification: OK" in verified.stdout, verified.stderr


async def test_b_t_signature_timestamp_verifies_with_openssl(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, status_checker, tmp_path: Path
) -> None:
    session, cache = status_checker
    signed = await _issue(
        serviced_hsm, "B-T", homeroom_pdf, session, cache, stages=(Stage.HOMEROOM_TEACHER,)
    )
    token = _timestamp_tokens(signed)[0]
    slot = contents_slot(signed, len(homeroom_pdf))
    signature = signed_cms(signed, slot)["content"]["signer_infos"][0]["signature"].native
    (tmp_path / "token.der").write_bytes(token.dump())
    (tmp_path / "signature.bin").write_bytes(signature)
    chain = (serviced_hsm.pki / "root.pem").read_text() + (
        serviced_hsm.pki / "issuing.pem"
    ).read_text()
    (tmp_path / "chain.pem").write_text(chain)

    # openssl: the token is a valid timestamp of this signature value, by a trusted TSA
    verified = subprocess.run(  # noqa: ASYNC221 - a short check, nothing else runs
        ["openssl", "ts", "-verify", "-token_in", "-in", str(tmp_path / "token.der"),
         "-data", str(tmp_path / "signature.bin"), "-CAfile", str(tmp_path / "chain.pem"),
         "-untrusted", serviced_hsm.tsa_pem],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0 and "Verification: OK" in verified.stdout, verified.stderr


async def test_revoked_signer_is_refused_before_its_key_is_used(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, status_checker
) -> None:
    session, cache = status_checker
    settings = serviced_hsm.signing("B-B")
    status = CertificateStatus(session, cache, settings)
    pool = await _pool(serviced_hsm, "B-B")
    signing = LeveledSigning(pool, status, None, "B-B")
    key = serviced_hsm.dev.key(SERVICED_SCHOOL, "GV-0901")
    try:
        # Given a teacher whose certificate the CA has just revoked
        assert pki_services.revoke(serviced_hsm.pki, serviced_hsm.serial("GV-0901"))
        # When the teacher's key is about to sign, then it is refused
        with pytest.raises(CertificateRevoked):
            await signing.sign(SignJob(homeroom_pdf, Stage.HOMEROOM_TEACHER, key))
    finally:
        await pool.close()
    # and the cached answer says so too, until its nextUpdate
    assert [a.status for a in cache.rows.values()] == ["revoked"]


async def _certificate(serviced: ServicedHsm, signer_id: str):  # type: ignore[no-untyped-def]
    from cryptography import x509

    pool = await _pool(serviced, "B-B")
    try:
        key = serviced.dev.key(SERVICED_SCHOOL, signer_id)
        cert = x509.load_der_x509_certificate((await pool.certificate(key)).dump())
        issuer = x509.load_der_x509_certificate((await pool.chain())[0].dump())
    finally:
        await pool.close()
    return cert, issuer


async def test_crl_answers_when_ocsp_is_down(serviced_hsm: ServicedHsm, status_checker) -> None:
    session, cache = status_checker
    cert, issuer = await _certificate(serviced_hsm, "GV-0902")
    assert pki_services.revoke(serviced_hsm.pki, serviced_hsm.serial("GV-0902"))
    serviced_hsm.running.set_down("ocsp")
    try:
        with pytest.raises(CertificateRevoked, match=r"\(crl\)"):
            await CertificateStatus(session, cache, serviced_hsm.signing("B-B")).check(cert, issuer)
    finally:
        serviced_hsm.running.set_down()


async def test_status_and_tsa_down_are_transient(serviced_hsm: ServicedHsm, status_checker) -> None:
    session, cache = status_checker
    settings = serviced_hsm.signing("B-T", tsa_timeout_s=2)
    cert, issuer = await _certificate(serviced_hsm, "GV-0903")
    serviced_hsm.running.set_down("ocsp", "crl", "tsa")
    try:
        with pytest.raises(CertificateStatusUnavailable) as refused:
            await CertificateStatus(session, cache, settings).check(cert, issuer)
        assert refused.value.code == "certificate_status_unavailable"
        with pytest.raises(TsaUnavailable) as stamped:
            await TsaClient(session, settings).stamp(b"\0" * 32)
        assert stamped.value.code == "tsa_unavailable"
    finally:
        serviced_hsm.running.set_down()
    assert cache.rows == {}  # nothing cached from an outage
    # and a TSA nobody listens on is the same transient failure
    nowhere = serviced_hsm.signing("B-T", tsa_url="http://127.0.0.1:9/tsa", tsa_timeout_s=2)
    with pytest.raises(TsaUnavailable):
        await TsaClient(session, nowhere).stamp(b"\0" * 32)


async def test_a_b_t_batch_timestamps_each_signature_and_fails_only_the_bad_job(
    serviced_hsm: ServicedHsm, homeroom_pdf: bytes, status_checker
) -> None:
    # Given B-T signing and a batch of three records, one of them for a key the token lacks
    session, cache = status_checker
    settings = serviced_hsm.signing("B-T")
    pool = await _pool(serviced_hsm, "B-T")
    key = serviced_hsm.dev.stage_key(SERVICED_SCHOOL, Stage.HOMEROOM_TEACHER)
    missing = serviced_hsm.dev.key(SERVICED_SCHOOL, "GV-0999")
    jobs = [SignJob(homeroom_pdf, Stage.HOMEROOM_TEACHER, k) for k in (key, missing, key)]
    before = serviced_hsm.running.counts
    try:
        tsa = TsaClient(session, settings)
        status = CertificateStatus(session, cache, settings)
        signing = LeveledSigning(pool, status, tsa, "B-T", serviced_hsm.dev.trust_roots)

        # When the batch is signed in one call
        results = await signing.sign_many(jobs)
    finally:
        await pool.close()

    # Then the missing key fails alone, and each other record has its own timestamp
    assert isinstance(results[1], UnknownSigner)
    signed = [r for n, r in enumerate(results) if n != 1]
    assert all(isinstance(r, SignResult) for r in signed)
    assert serviced_hsm.running.counts["tsa"] - before["tsa"] == 2
    for result in signed:
        assert isinstance(result, SignResult)
        assert len(_timestamp_tokens(result.pdf)) == 1
        [report] = await validate_pdf_async(result.pdf, serviced_hsm.dev.trust_roots)
        assert report.intact and report.valid and report.trusted
