"""The HSM session pool against SoftHSM, directly and through `p11-kit server`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import signal
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from daemon.errors import (
    CertificateInvalid,
    ConfigError,
    HsmUnavailable,
    Unauthorized,
    UnknownSigner,
)
from daemon.hsm import KeyRef, SigningPool, SignJob, check_certificate
from daemon.pdf.validation import validate_pdf
from daemon.settings import SigningSettings
from daemon.stages import Stage
from tests.hsm_fixtures import EXPIRED_SCHOOL, SCHOOLS, DevHsm, P11KitServer

TEACHER = Stage.HOMEROOM_TEACHER


async def test_sign_reports_signer_and_digest(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    key = dev_hsm.stage_key(SCHOOLS[0], TEACHER)

    result = await pool.sign(SignJob(homeroom_pdf, TEACHER, key))

    provisioned = {s.key_label: s for s in dev_hsm.signers}[key.key_label]
    assert result.cert_serial == provisioned.cert_serial
    assert result.signer_subject == "Giao vien 0001"
    assert 0 < result.hsm_seconds < 5
    assert result.sha256 == hashlib.sha256(result.pdf).hexdigest()
    assert result.pdf.startswith(homeroom_pdf)
    cert = await pool.certificate(key)
    assert format(cert.serial_number, "x") == provisioned.cert_serial


async def test_a_school_cannot_use_another_schools_key(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    foreign = dev_hsm.stage_key(SCHOOLS[0], TEACHER)
    borrowed = KeyRef(SCHOOLS[1], foreign.token_label, foreign.key_label)
    other_token = KeyRef(SCHOOLS[0], "another-token", foreign.key_label)

    for key in (borrowed, other_token):
        with pytest.raises(Unauthorized):
            await pool.sign(SignJob(homeroom_pdf, TEACHER, key))


async def test_unknown_key_is_an_unknown_signer(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    with pytest.raises(UnknownSigner):
        await pool.sign(SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-9999")))


async def test_expired_certificate_is_refused(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1)
    with pytest.raises(CertificateInvalid, match="expired"):
        await pool.sign(SignJob(homeroom_pdf, TEACHER, dev_hsm.key(EXPIRED_SCHOOL, "GV-0001")))


def make_cert(usage: dict[str, bool], start: datetime, end: datetime) -> asn1_x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "t")])
    flags = dict.fromkeys(
        ["digital_signature", "content_commitment", "key_encipherment",
         "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
         "encipher_only", "decipher_only"],
        False,
    )  # fmt: skip
    flags.update(usage)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.KeyUsage(**flags), critical=True)
        .sign(key, hashes.SHA256())
    )
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def test_certificate_check() -> None:
    now = datetime.now(UTC)
    day = timedelta(days=1)
    check_certificate(make_cert({"content_commitment": True}, now - day, now + day), now)
    check_certificate(make_cert({"digital_signature": True}, now - day, now + day), now)
    with pytest.raises(CertificateInvalid, match="expired"):
        check_certificate(make_cert({"digital_signature": True}, now - 2 * day, now - day), now)
    with pytest.raises(CertificateInvalid, match="not valid before"):
        check_certificate(make_cert({"digital_signature": True}, now + day, now + 2 * day), now)
    with pytest.raises(CertificateInvalid, match="neither"):
        check_certificate(make_cert({"key_encipherment": True}, now - day, now + day), now)


async def test_wrong_pin_fails_at_start(dev_hsm: DevHsm) -> None:
    pool = SigningPool(dev_hsm.settings(1, pin=SecretStr("0000")), SigningSettings())
    with pytest.raises(ConfigError):
        await pool.start()


async def test_unknown_token_fails_at_start(dev_hsm: DevHsm) -> None:
    pool = SigningPool(dev_hsm.settings(1, token_label="nope"), SigningSettings())
    with pytest.raises(HsmUnavailable):
        await pool.start()


async def test_pools_logging_in_at_the_same_moment_all_start(dev_hsm: DevHsm) -> None:
    # Given SoftHSM2, which rewrites its token file at every login (a process listing
    # the slots meanwhile may not see the token for a moment)
    for _ in range(3):
        # When four pools of two workers each log in at once, as instances starting
        pools = [SigningPool(dev_hsm.settings(2), SigningSettings()) for _ in range(4)]
        started = await asyncio.gather(*(p.start() for p in pools), return_exceptions=True)
        try:
            # Then every one of them starts, each worker logged in
            assert [r for r in started if r is not None] == []
            await asyncio.gather(*(p.ping() for p in pools for _ in range(2)))
        finally:
            await asyncio.gather(*(p.close() for p in pools))


async def test_pool_signs_concurrently(dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes) -> None:
    # Given two workers and 40 records from two schools at once
    pool = await signing_pool(workers=2)
    jobs = [
        SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[n % 2], f"GV-000{n % 2 + 1}"))
        for n in range(40)
    ]

    # When they are all signed concurrently
    results = await asyncio.gather(*(pool.sign(job) for job in jobs))

    # Then each is signed by its own school's key and validates
    assert len({r.sha256 for r in results}) == 40
    for job, result in zip(jobs, results, strict=True):
        [report] = await asyncio.to_thread(validate_pdf, result.pdf, dev_hsm.trust_roots)
        assert report.bottom_line
        assert report.cert_serial == result.cert_serial
        assert f"{job.key.school_id}/" in job.key.key_label


async def test_pool_recovers_from_a_dead_worker(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=2)
    job = SignJob(homeroom_pdf, TEACHER, dev_hsm.stage_key(SCHOOLS[0], TEACHER))
    await pool.sign(job)

    # When the worker processes are killed (once the first is gone the executor may
    # reap the second itself before it is reached)
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid or 0, signal.SIGKILL)
        child.join()

    # Then the call in flight fails as transient, and the next one works
    with pytest.raises(HsmUnavailable):
        await pool.sign(job)
    await pool.sign(job)


async def test_networked_hsm_outage_and_recovery(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes, p11kit_server: P11KitServer
) -> None:
    # Given a pool talking to the token through p11-kit server
    pool = await signing_pool(workers=1, **p11kit_server.hsm_overrides())
    job = SignJob(homeroom_pdf, TEACHER, dev_hsm.stage_key(SCHOOLS[0], TEACHER))
    signed = await pool.sign(job)
    [report] = await asyncio.to_thread(validate_pdf, signed.pdf, dev_hsm.trust_roots)
    assert report.bottom_line

    # When the server goes away, signing and pings fail as transient
    p11kit_server.stop()
    with pytest.raises(HsmUnavailable):
        await pool.sign(job)
    with pytest.raises(HsmUnavailable):
        await pool.ping()

    # Then, once it is back on the same address, the pool signs again
    p11kit_server.start()
    await pool.ping()
    signed = await pool.sign(job)
    [report] = await asyncio.to_thread(validate_pdf, signed.pdf, dev_hsm.trust_roots)
    assert report.bottom_line


async def test_a_hung_hsm_times_out_and_the_pool_recovers(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes, p11kit_server: P11KitServer
) -> None:
    overrides = {**p11kit_server.hsm_overrides(), "op_timeout_s": 3.0}
    pool = await signing_pool(workers=1, **overrides)
    job = SignJob(homeroom_pdf, TEACHER, dev_hsm.stage_key(SCHOOLS[0], TEACHER))
    await pool.sign(job)

    # When the HSM stops answering, the call times out as transient
    p11kit_server.pause()
    try:
        with pytest.raises(HsmUnavailable, match="did not answer"):
            await pool.sign(job)
    finally:
        p11kit_server.resume()

    # Then the stuck worker was replaced and signing works again
    await pool.sign(job)
