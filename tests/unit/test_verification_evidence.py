"""Each signature's timestamp and revocation status in `verify`'s report, from the file alone."""

from __future__ import annotations

import binascii
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms, pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from daemon.ltv.timestamps import CmsSplice, contents_slot
from daemon.pdf import pades
from daemon.pdf.cms import SignedDataTemplate
from daemon.pdf.dss_update import ValidationData, read_ltv_target
from daemon.pdf.pades import read_pdf
from daemon.pdf.syntax import Unsupported
from daemon.stages import ORDER, Stage
from daemon.verification import report as verify
from daemon.verification.evidence import evidence_of
from daemon.verification.printed import Signed, _times
from daemon.verification.signed import signed_fields
from tests.unit.ltv_kit import LtvServices
from tests.unit.signing_kit import SIGNED_AT, Pki, make_pki, record, sign


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> LtvServices:
    return LtvServices(tmp_path_factory.mktemp("evidence-pki"))


def _roots(tmp_path: Path, *certs: asn1_x509.Certificate) -> list[Path]:
    path = tmp_path / "roots.pem"
    path.write_bytes(b"".join(pem.armor("CERTIFICATE", c.dump()) for c in certs))
    return [path]


def _timestamped(original: bytes, pki: Pki, services: LtvServices) -> tuple[bytes, datetime]:
    """The teacher's signature with a TSA token over its value spliced in; the genTime."""
    template, raw_sign = pki.signers[Stage.HOMEROOM_TEACHER]
    signed = pades.prepare_and_sign(
        original, Stage.HOMEROOM_TEACHER, template, raw_sign,
        bytes_reserved=16 * 1024, signing_time=SIGNED_AT, unsigned_bytes=4096,
    ).pdf  # fmt: skip
    slot = contents_slot(signed, len(original))
    splice = CmsSplice.of(binascii.unhexlify(signed[slot.start : slot.end]))
    token = services.token(hashlib.sha256(splice.signature).digest())
    digits = binascii.hexlify(splice.with_token(token))
    digits += b"0" * (slot.end - slot.start - len(digits))
    info = cms.ContentInfo.load(token)["content"]["encap_content_info"]["content"].parsed
    return signed[: slot.start] + digits + signed[slot.end :], info["gen_time"].native


def test_a_b_b_record_has_no_timestamp_and_an_unknown_status(pki: Pki, tmp_path: Path) -> None:
    # Given a record signed through its three stages at B-B (no timestamp, no DSS)
    pdf = sign(record(), ORDER, pki)

    # When verify reports on it
    value = verify.report(pdf, _roots(tmp_path, pki.root))

    # Then each signature has no timestamp and an unknown revocation status, and the
    # verdict and every other field are as before
    assert [s["timestamp_at"] for s in value["signatures"]] == [None, None, None]
    assert [s["revocation"] for s in value["signatures"]] == ["unknown"] * 3
    assert all(s["intact"] and s["valid"] and s["trusted"] for s in value["signatures"])
    assert value["verdict"] == "invalid"  # the test certificates claim no school or role
    text = verify.render(value, as_json=False)
    assert text.count("timestamp: none; revocation: unknown") == 3


def test_a_valid_signature_timestamp_gives_its_gen_time(
    pki: Pki, services: LtvServices, tmp_path: Path
) -> None:
    # Given a signature carrying a signature timestamp by a TSA under a trusted CA
    pdf, gen_time = _timestamped(record(), pki, services)

    # When verify reports on it
    (row,) = verify.report(pdf, _roots(tmp_path, pki.root, services.ca))["signatures"]

    # Then timestamp_at is the token's genTime, with its UTC offset; the file has no
    # revocation data, so the status is unknown
    assert row["timestamp_at"] == gen_time.isoformat()
    assert datetime.fromisoformat(row["timestamp_at"]).utcoffset() == timedelta(0)
    assert abs(datetime.fromisoformat(row["timestamp_at"]) - datetime.now(UTC)) < timedelta(
        minutes=5
    )
    assert row["revocation"] == "unknown"
    assert row["intact"] and row["valid"] and row["trusted"]


def test_a_timestamp_by_an_untrusted_tsa_gives_no_time(
    pki: Pki, services: LtvServices, tmp_path: Path
) -> None:
    # Given the same kind of signature, but the TSA's CA is not among the trust roots
    pdf, _ = _timestamped(record(), pki, services)

    # When its evidence is read
    (found,) = evidence_of(pdf, [pki.root])

    # Then the token does not validate, so there is no timestamp to show
    assert found.field_name == "GVCN"
    assert found.timestamp_at is None
    assert found.revocation == "unknown"


def test_the_printed_copy_names_the_timestamp_and_the_status() -> None:
    stamped = Signed("GVCN", "Nguyen Van A", "2025-09-05T08:30:00+00:00",
                     "2025-09-05T08:30:02+00:00", "good")  # fmt: skip
    bare = Signed("GVCN", "Nguyen Van A", "2025-09-05T08:30:00+00:00")
    assert _times(stamped).splitlines()[1:] == [
        "Dấu thời gian: 15:30 ngày 05/09/2025",
        "Chứng thư số lúc ký: còn hiệu lực",
    ]
    assert _times(bare).splitlines()[1:] == [
        "Dấu thời gian: không có",
        "Chứng thư số lúc ký: không rõ",
    ]


class _Authority:
    """A CA with its key, one signer it certifies, and CRLs it signs."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Evidence Test CA")])
        now = datetime.now(UTC)
        ca = self._issue(self.name, self.key.public_key(), ca=True, now=now)
        self.cert = asn1_x509.Certificate.load(ca.public_bytes(serialization.Encoding.DER))
        signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Evidence Test Signer")])
        signer = self._issue(name, signer_key.public_key(), ca=False, now=now)
        self.serial = signer.serial_number
        cert = asn1_x509.Certificate.load(signer.public_bytes(serialization.Encoding.DER))
        template = SignedDataTemplate.for_signer(cert, [self.cert])

        def raw_sign(data: bytes) -> bytes:
            return signer_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

        self.signer = (template, raw_sign)

    def _issue(self, subject: x509.Name, public_key: Any, *, ca: bool, now: datetime) -> Any:
        usage = x509.KeyUsage(
            digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def crl(self, revoked_at: datetime | None = None, issued_at: datetime | None = None) -> bytes:
        issued_at = issued_at or datetime.now(UTC) - timedelta(minutes=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(issued_at)
            .next_update(issued_at + timedelta(days=7))
        )
        if revoked_at is not None:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(self.serial)
                .revocation_date(revoked_at)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _with_crl(authority: _Authority, services: LtvServices, crl: bytes) -> bytes:
    """A timestamped signature by the authority's signer, then a DSS holding `crl`."""
    pki = Pki(authority.cert, {Stage.HOMEROOM_TEACHER: authority.signer})
    pdf, _ = _timestamped(record(), pki, services)
    data = ValidationData([authority.cert.dump(), services.ca.dump()], [], [crl])
    return read_ltv_target(pdf).dss_update(data)


@pytest.fixture(scope="module")
def authority() -> _Authority:
    return _Authority()


def test_a_crl_in_the_dss_that_lists_no_one_says_good(
    authority: _Authority, services: LtvServices
) -> None:
    pdf = _with_crl(authority, services, authority.crl())
    (found,) = evidence_of(pdf, [authority.cert, services.ca])
    assert found.timestamp_at is not None
    assert found.revocation == "good"


def test_a_crl_in_the_dss_that_revoked_the_signer_before_signing_says_revoked(
    authority: _Authority, services: LtvServices
) -> None:
    pdf = _with_crl(authority, services, authority.crl(datetime.now(UTC) - timedelta(hours=1)))
    (found,) = evidence_of(pdf, [authority.cert, services.ca])
    assert found.revocation == "revoked"


def test_a_crl_by_another_ca_settles_nothing(authority: _Authority, services: LtvServices) -> None:
    pdf = _with_crl(authority, services, services.crl)
    (found,) = evidence_of(pdf, [authority.cert, services.ca])
    assert found.revocation == "unknown"


def test_a_later_crl_that_revoked_the_signer_after_the_timestamp_says_good(
    authority: _Authority, services: LtvServices
) -> None:
    # Given a CRL issued two hours after signing, revoking the signer an hour after it
    now = datetime.now(UTC)
    crl = authority.crl(now + timedelta(hours=1), issued_at=now + timedelta(hours=2))
    pdf = _with_crl(authority, services, crl)

    # Then at the timestamp's time the certificate was good
    (found,) = evidence_of(pdf, [authority.cert, services.ca])
    assert found.timestamp_at is not None and found.timestamp_at < now + timedelta(minutes=5)
    assert found.revocation == "good"


def test_a_dss_holding_garbage_settles_nothing_and_breaks_nothing(
    authority: _Authority, services: LtvServices, tmp_path: Path
) -> None:
    # Given a timestamped signature whose DSS holds bytes that are no OCSP answer
    pki = Pki(authority.cert, {Stage.HOMEROOM_TEACHER: authority.signer})
    pdf, _ = _timestamped(record(), pki, services)
    broken = read_ltv_target(pdf).dss_update(ValidationData([], [b"\x30\x03\x02\x01\x07"], []))

    # When verify reports on it
    (row,) = verify.report(broken, _roots(tmp_path, authority.cert, services.ca))["signatures"]

    # Then the status is unknown, and the signature is judged as before
    assert row["revocation"] == "unknown"
    assert row["timestamp_at"] is not None
    assert row["intact"] and row["valid"] and row["trusted"]


def _pyhanko_fields(pdf: bytes) -> list[tuple[str, bytes]]:
    return [(s.field_name, s.signed_data.dump()) for s in read_pdf(pdf).embedded_regular_signatures]


def test_the_signatures_read_by_hand_are_pyhankos(
    pki: Pki, authority: _Authority, services: LtvServices
) -> None:
    # Given a B-B record, and a timestamped signature followed by a DSS
    issued = sign(record(), ORDER, pki)
    with_dss = _with_crl(authority, services, authority.crl())

    # Then the hand-written reader finds the same signatures, with the same CMS, as pyHanko
    for pdf in (issued, with_dss):
        mine = [(f.field_name, f.signed_data.dump()) for f in signed_fields(pdf)]
        assert mine == _pyhanko_fields(pdf) and mine


def test_a_file_the_hand_reader_does_not_take_is_read_by_pyhanko(
    authority: _Authority, services: LtvServices
) -> None:
    # Given a timestamped signature and a DSS, and the same file with bytes after %%EOF,
    # which the hand-written reader refuses
    pdf = _with_crl(authority, services, authority.crl())
    tailed = pdf + b"% a comment after the end\n"
    with pytest.raises(Unsupported):
        signed_fields(tailed)

    # Then pyHanko reads it instead, to the same evidence
    roots = [authority.cert, services.ca]
    found = evidence_of(tailed, roots)
    assert found == evidence_of(pdf, roots)
    assert [(e.field_name, e.revocation) for e in found] == [("GVCN", "good")]
    assert found[0].timestamp_at is not None
