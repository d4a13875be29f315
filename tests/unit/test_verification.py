"""What a certificate and a PDF say about who signed what, read by daemon.verification."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from fpdf import FPDF

from daemon.packaging.check import PackageReport
from daemon.pdf.validation import SignatureReport
from daemon.settings import DEV_ROLE_POLICIES, VerificationSettings
from daemon.stages import Stage
from daemon.verification import basis, described
from daemon.verification.identity import identify
from daemon.verification.verdict import (
    Basis,
    Problem,
    RegisteredSigner,
    Registry,
    Verdict,
    judge,
    rejudge,
)

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


def _unclaimed_record() -> list[SignatureReport]:
    """Three sound signatures whose certificates claim no school and no role."""
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    certs = [_cert_for(key, serial) for key, serial in zip(keys, (1, 2, 3), strict=True)]
    return [
        _report("GVCN", certs[0], "ENTIRE_REVISION"),
        _report("HieuTruong", certs[1], "ENTIRE_REVISION"),
        _report("DauTruong", certs[2], "ENTIRE_FILE"),
    ]


def _fingerprint(report: SignatureReport) -> str:
    assert report.signer_cert is not None
    return hashlib.sha256(report.signer_cert.dump()).hexdigest()


SCHOOL = "31000123"
STAGES = {
    "GV-0001": Stage.HOMEROOM_TEACHER,
    "BGH-0001": Stage.PRINCIPAL,
    "SEAL": Stage.SCHOOL_SEAL,
}


def _registry(reports: list[SignatureReport], **stages: Stage) -> Registry:
    """The school's registry, holding each report's certificate by its fingerprint."""
    ids = list(STAGES)
    return Registry(
        by_certificate={
            _fingerprint(r): RegisteredSigner(SCHOOL, i, stages.get(i.replace("-", "_"), STAGES[i]))
            for r, i in zip(reports, ids, strict=True)
        },
        schools=frozenset({SCHOOL}),
    )


def test_where_the_registry_is_known_it_says_who_signed() -> None:
    reports = _unclaimed_record()
    rules = VerificationSettings()

    # By the certificates alone it is invalid, by the registry it is issued
    assert judge(reports, rules).verdict is Verdict.INVALID
    judged = judge(reports, rules, school_id=SCHOOL, registered=_registry(reports))
    assert (judged.verdict, judged.basis) == (Verdict.ISSUED, Basis.REGISTRY)
    assert [j.identity.signer_id for j in judged.signatures if j.identity] == list(STAGES)


def test_a_certificate_the_registry_does_not_know_for_its_school_is_not_registered() -> None:
    reports = _unclaimed_record()
    registry = _registry(reports)
    del registry.by_certificate[_fingerprint(reports[1])]  # type: ignore[attr-defined]

    judged = judge(reports, VerificationSettings(), school_id=SCHOOL, registered=registry)

    assert judged.verdict is Verdict.INVALID and "signer_not_registered" in judged.codes()


def test_the_registrys_role_outranks_what_the_certificate_claims() -> None:
    # The teacher's certificate says homeroom teacher; the registry has them as principal
    cert = _cert(org_id=SCHOOL, policies=(TEACHER_POLICY,))
    reports = [_report("GVCN", cert, "ENTIRE_FILE")]
    registry = Registry(
        by_certificate={
            _fingerprint(reports[0]): RegisteredSigner(SCHOOL, "GV-0001", Stage.PRINCIPAL)
        },
        schools=frozenset({SCHOOL}),
    )
    rules = VerificationSettings()

    assert judge(reports, rules).codes() == ["incomplete"]
    judged = judge(reports, rules, registered=registry)
    assert judged.verdict is Verdict.INVALID and "role_mismatch" in judged.codes()
    assert "the registry has" in judged.problems[0].message


def test_a_record_of_a_school_the_registry_lacks_is_judged_by_its_certificates() -> None:
    cert = _cert(org_id="79000001", policies=(TEACHER_POLICY,))
    reports = [_report("GVCN", cert, "ENTIRE_FILE")]

    judged = judge(reports, VerificationSettings(), registered=Registry(schools=frozenset()))

    assert (judged.verdict, judged.basis) == (Verdict.NOT_ISSUED, Basis.CERTIFICATES)
    assert judged.notes and "79000001 is not in this registry" in judged.notes[0]


def test_a_serial_is_asked_only_where_no_fingerprint_matched() -> None:
    reports = [dataclasses.replace(_unclaimed_record()[0], coverage="ENTIRE_FILE")]
    by_serial = RegisteredSigner(SCHOOL, "GV-OLD", Stage.HOMEROOM_TEACHER)
    exact = RegisteredSigner(SCHOOL, "GV-0001", Stage.PRINCIPAL)
    legacy = Registry(by_serial={"1": by_serial}, schools=frozenset({SCHOOL}))
    both = dataclasses.replace(legacy, by_certificate={_fingerprint(reports[0]): exact})
    rules = VerificationSettings()

    assert judge(reports, rules, school_id=SCHOOL, registered=legacy).codes() == ["incomplete"]
    judged = judge(reports, rules, school_id=SCHOOL, registered=both)
    assert "role_mismatch" in judged.codes()


def test_judged_again_the_packages_problems_are_the_new_verdicts() -> None:
    reports = _unclaimed_record()
    before = judge(reports, VerificationSettings(), school_id=SCHOOL)
    listed = [Problem(p.code, f"records/R1.pdf: {p.message}") for p in before.problems]
    container = Problem("zip_gap", "bytes in no entry")
    package = PackageReport(problems=[container, *listed], records={"R1": before})

    after = rejudge(before, VerificationSettings(), _registry(reports))
    again = basis.with_verdicts(package, {"R1": after})

    assert (after.verdict, again.problems) == (Verdict.ISSUED, [container])
    assert again.records["R1"] is after


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


def test_a_signature_claimed_after_its_signer_was_deactivated_is_invalid() -> None:
    signed_at = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)
    cert = _cert(org_id=SCHOOL, policies=(TEACHER_POLICY,))
    report = dataclasses.replace(_report("GVCN", cert, "ENTIRE_FILE"), signing_time=signed_at)
    teacher = RegisteredSigner(SCHOOL, "GV-0001", Stage.HOMEROOM_TEACHER)
    rules = VerificationSettings()

    def registry(signer: RegisteredSigner) -> Registry:
        return Registry({_fingerprint(report): signer}, schools=frozenset({SCHOOL}))

    before = dataclasses.replace(
        teacher, active=False, deactivated_at=signed_at + timedelta(days=1)
    )
    after = dataclasses.replace(teacher, active=False, deactivated_at=signed_at - timedelta(days=1))
    assert judge([report], rules, registered=registry(before)).codes() == ["incomplete"]
    assert "signer_deactivated" in judge([report], rules, registered=registry(after)).codes()
