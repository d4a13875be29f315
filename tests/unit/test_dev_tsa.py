"""The dev TSA's tokens, checked by openssl and pyHanko, and its refusals."""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import algos, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from daemon.dev import pki_services
from daemon.dev.tsa import POLICY, TimestampAuthority, TimeStampReply
from tests.unit.ltv_kit import make_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root, an issuing CA and the dev TSA certificate it issues (no services named)."""
    pki = tmp_path_factory.mktemp("pki")
    root = make_ca(pki, "Test Root", "root")
    make_ca(pki, "Test Issuing CA", "issuing", root)
    pki_services.ensure_tsa(pki)
    return pki


@pytest.fixture(scope="module")
def authority(pki: Path) -> TimestampAuthority:
    cert = x509.load_pem_x509_certificate((pki / "tsa.pem").read_bytes())
    key = serialization.load_pem_private_key((pki / "tsa.key").read_bytes(), None)
    issuing = x509.load_pem_x509_certificate((pki / "issuing.pem").read_bytes())
    assert isinstance(key, rsa.RSAPrivateKey)
    der = serialization.Encoding.DER
    return TimestampAuthority(cert.public_bytes(der), key, [issuing.public_bytes(der)])


def _request(digest: bytes, **fields: object) -> tsp.TimeStampReq:
    values: dict[str, object] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "hashed_message": digest,
        },
        "nonce": secrets.randbits(63),
        "cert_req": True,
    }
    values.update(fields)
    return tsp.TimeStampReq(values)


def test_token_verifies_with_openssl(
    pki: Path, authority: TimestampAuthority, tmp_path: Path
) -> None:
    # Given data and a request for a timestamp of it
    data = b"the signature value of a school record"
    request = _request(hashlib.sha256(data).digest())
    (tmp_path / "data.bin").write_bytes(data)
    (tmp_path / "request.tsq").write_bytes(request.dump())
    (tmp_path / "chain.pem").write_bytes(
        (pki / "root.pem").read_bytes() + (pki / "issuing.pem").read_bytes()
    )

    # When the dev TSA answers it
    (tmp_path / "reply.tsr").write_bytes(authority.respond(request.dump()))

    # Then openssl accepts the reply for that request (nonce, imprint, policy) and
    # the data, with the chain up to the root
    for how in (
        ["-queryfile", str(tmp_path / "request.tsq")],
        ["-data", str(tmp_path / "data.bin")],
    ):
        verified = subprocess.run(
            ["openssl", "ts", "-verify", "-in", str(tmp_path / "reply.tsr"), *how,
             "-CAfile", str(tmp_path / "chain.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert verified.returncode == 0 and "Verification: OK" in verified.stdout, verified.stderr
    # and the reply says what a TSA must say
    shown = subprocess.run(
        ["openssl", "ts", "-reply", "-in", str(tmp_path / "reply.tsr"), "-text"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Status: Granted." in shown
    assert f"Policy OID: {POLICY}" in shown
    assert "Accuracy: 0x01 seconds" in shown
    # openssl prints whole bytes (0x0858…): compare the number, not its digits.
    nonce = re.search(r"Nonce: 0x([0-9A-Fa-f]+)", shown)
    assert nonce is not None, shown
    assert int(nonce.group(1), 16) == request["nonce"].native


async def test_token_validates_with_pyhanko(pki: Path, authority: TimestampAuthority) -> None:
    from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
    from pyhanko.sign.validation.status import TimestampSignatureStatus
    from pyhanko_certvalidator import ValidationContext

    digest = hashlib.sha256(b"a record").digest()
    reply = TimeStampReply.load(authority.respond(_request(digest).dump()))
    root = asn1_x509.Certificate.load(
        x509.load_pem_x509_certificate((pki / "root.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )
    context = ValidationContext(
        trust_roots=[root], allow_fetching=False, revocation_mode="soft-fail"
    )

    status = TimestampSignatureStatus(
        **await validate_tst_signed_data(
            reply["time_stamp_token"]["content"],
            context,
            expected_tst_imprint=lambda _algorithm: digest,
        )
    )

    assert status.intact and status.valid and status.trusted
    assert status.timestamp is not None
    assert status.signing_cert.subject.native["common_name"] == "Hocba Dev TSA"
    tsa_cert = x509.load_pem_x509_certificate((pki / "tsa.pem").read_bytes())
    usage = tsa_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert usage.critical and list(usage.value) == [ExtendedKeyUsageOID.TIME_STAMPING]


def test_each_token_has_its_own_serial_and_the_time_asked(authority: TimestampAuthority) -> None:
    at = datetime(2031, 5, 20, 8, 0, 0, 123456, tzinfo=UTC)
    infos = [
        TimeStampReply.load(authority.respond(_request(b"\1" * 32).dump(), at))["time_stamp_token"][
            "content"
        ]["encap_content_info"]["content"].parsed
        for _ in range(3)
    ]
    assert len({i["serial_number"].native for i in infos}) == 3
    assert {i["gen_time"].native for i in infos} == {at.replace(microsecond=123000)}


def test_no_certificates_unless_asked(authority: TimestampAuthority) -> None:
    reply = TimeStampReply.load(authority.respond(_request(b"\2" * 32, cert_req=False).dump()))
    assert reply["status"]["status"].native == "granted"
    assert not reply["time_stamp_token"]["content"]["certificates"].native


@pytest.mark.parametrize(
    ("request_der", "failure"),
    [
        (b"not a request", "bad_data_format"),
        (_request(b"\3" * 20).dump(), "bad_data_format"),
        (
            _request(
                b"\3" * 20,
                message_imprint={
                    "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha1"}),
                    "hashed_message": b"\3" * 20,
                },
            ).dump(),
            "bad_alg",
        ),
        (_request(b"\3" * 32, req_policy="1.2.3.4").dump(), "unaccepted_policy"),
    ],
)
def test_refuses_what_it_cannot_grant(
    authority: TimestampAuthority, request_der: bytes, failure: str
) -> None:
    reply = TimeStampReply.load(authority.respond(request_der))
    assert reply["status"]["status"].native == "rejection"
    assert reply["status"]["fail_info"].native == {failure}
    assert not reply["time_stamp_token"].native
