"""What a certificate and a PDF say about who signed what, read by daemon.verification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from fpdf import FPDF

from daemon.pdf.validation import SignatureReport
from daemon.settings import DEV_ROLE_POLICIES, VerificationSettings
from daemon.stages import Stage
from daemon.verification import described
from daemon.verification.identity import identify
from daemon.verification.verdict import RegisteredSigner, Verdict, judge

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TEACHER_POLICY = next(o for o, r in DEV_ROLE_POLICIES.items() if r == "homeroom_teacher")
SEAL_POLICY = next(o for o, r in DEV_ROLE_POLICIES.items() if r == "school_seal")


def _cert(
    *, org_id: str | None = None, title: str | None = None, policies: tuple[str, ...] = ()
) -> asn1_x509.Certificate:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, "Nguyen Van A")]
    if org_id is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, org_id))
    if title is not None:
        attrs.append(x509.NameAttribute(NameOID.TITLE, title))
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .public_key(KEY.public_key())
        .serial_number(0x1234)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
    )
    if policies:
        builder = builder.add_extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(ObjectIdentifier(p), None) for p in policies]
            ),
            critical=False,
        )
    cert = builder.sign(KEY, hashes.SHA256())
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def test_the_dev_certificates_say_school_and_role_by_policy() -> None:
    who = identify(_cert(org_id="31000123", policies=(TEACHER_POLICY,)), VerificationSettings())
    assert (who.school_id, who.role, who.cert_serial) == (
        "31000123",
        Stage.HOMEROOM_TEACHER,
        "1234",
    )


def test_a_real_cas_title_and_prefix_can_be_mapped() -> None:
    rules = VerificationSettings(roles={"Hiệu trưởng": "principal"}, school_id_prefix="EDUVN-")
    who = identify(_cert(org_id="EDUVN-31000123", title="Hiệu trưởng"), rules)
    assert (who.school_id, who.role) == ("31000123", Stage.PRINCIPAL)
    # Without the prefix the school id is not one this mapping accepts.
    assert identify(_cert(org_id="31000123", title="Hiệu trưởng"), rules).school_id is None


def test_a_certificate_claiming_two_roles_has_none() -> None:
    cert = _cert(org_id="31000123", policies=(TEACHER_POLICY, SEAL_POLICY))
    assert identify(cert, VerificationSettings()).role is None


def test_a_certificate_without_claims_has_no_school_and_no_role() -> None:
    who = identify(_cert(), VerificationSettings())
    assert (who.school_id, who.role) == (None, None)


def test_a_pdf_describes_its_record_in_its_xmp() -> None:
    pdf = FPDF()
    pdf.add_page()
    said = described.RecordDescription("2025-2026-5A-07", "3100012300007", "31000123", "2025-2026")
    pdf.set_xmp_metadata(described.xmp(said))
    assert described.describe_pdf(bytes(pdf.output())) == said


def test_a_pdf_without_xmp_or_not_a_pdf_describes_nothing() -> None:
    pdf = FPDF()
    pdf.add_page()
    assert described.describe_pdf(bytes(pdf.output())) is None
    assert described.describe_pdf(b"not a pdf") is None
    assert described.parse_xmp(b"<not xml") is None


def _report(field: str, cert: asn1_x509.Certificate, coverage: str) -> SignatureReport:
    return SignatureReport(
        field_name=field, signer_subject="Nguyen Van A", cert_serial="1234", signing_time=None,
        intact=True, valid=True, trusted=True, docmdp_level=None, modification_level="NONE",
        docmdp_ok=True, coverage=coverage, bottom_line=True, summary="", signer_cert=cert,
    )  # fmt: skip


def test_where_the_registry_is_known_it_says_who_signed() -> None:
    # Given a record whose certificates claim nothing, but whose signers are registered
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    certs = [_cert_for(key, serial) for key, serial in zip(keys, (1, 2, 3), strict=True)]
    reports = [
        _report("GVCN", certs[0], "ENTIRE_REVISION"),
        _report("HieuTruong", certs[1], "ENTIRE_REVISION"),
        _report("DauTruong", certs[2], "ENTIRE_FILE"),
    ]
    registry = {
        "1": RegisteredSigner("31000123", "GV-0001", Stage.HOMEROOM_TEACHER),
        "2": RegisteredSigner("31000123", "BGH-0001", Stage.PRINCIPAL),
        "3": RegisteredSigner("31000123", "SEAL", Stage.SCHOOL_SEAL),
    }
    rules = VerificationSettings()

    # Then by the certificates alone it is invalid, by the registry it is issued
    assert judge(reports, rules).verdict is Verdict.INVALID
    assert judge(reports, rules, registered=registry).verdict is Verdict.ISSUED
    # And a signer the registry does not know is not taken on the certificate's word
    del registry["2"]
    judged = judge(reports, rules, registered=registry)
    assert judged.verdict is Verdict.INVALID and "unregistered_signer" in judged.codes()


def _cert_for(key: rsa.RSAPrivateKey, serial: int) -> asn1_x509.Certificate:
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"S{serial}")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
