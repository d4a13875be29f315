"""A software PKI and records to sign, for the tests of the PDF signing paths.

Software RSA keys and a self-made root stand in for the HSM; records are written
the way schools' systems write them (fpdf2), or rewritten by pyHanko or qpdf.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from fpdf import FPDF

from daemon.pdf import certification, incremental, pades, validation
from daemon.pdf.cms import RawSign, SignedDataTemplate
from daemon.stages import FIELD_NAMES, ORDER, Stage
from tests.hsm_fixtures import FONT

SIGNED_AT = datetime(2025, 9, 5, 8, 30, tzinfo=UTC)
BYTES_RESERVED = 16 * 1024
LATER_STAGES = (Stage.PRINCIPAL, Stage.SCHOOL_SEAL)
Sign = Callable[..., bytes]  # prepare_and_sign's arguments, the signed PDF back


@dataclass(frozen=True)
class Pki:
    root: asn1_x509.Certificate
    signers: dict[Stage, tuple[SignedDataTemplate, RawSign]]


def make_pki(names: dict[Stage, tuple[str, str | None]] | None = None) -> Pki:
    """A root CA and one software-key signer per stage, named (CN, O) by `names`."""
    root_key = _rsa_key()
    root = _certificate("Hocba Test Root", root_key, "Hocba Test Root", root_key, ca=True)
    signers = {}
    for stage in ORDER:
        key = _rsa_key()
        name, organization = (names or {}).get(stage, (f"Signer {stage.value}", None))
        cert = _certificate(name, key, "Hocba Test Root", root_key, ca=False, org=organization)
        signers[stage] = (SignedDataTemplate.for_signer(cert, [root]), _raw_signer(key))
    return Pki(root, signers)


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: rsa.RSAPrivateKey,
    ca: bool,
    org: str | None = None,
) -> asn1_x509.Certificate:
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, subject)]
                + ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else [])
            )
        )
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _raw_signer(key: rsa.RSAPrivateKey) -> RawSign:
    def raw_sign(data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return raw_sign


def signed_pdf(*args: Any, **kwargs: Any) -> bytes:
    """pades.prepare_and_sign, the PDF only (the daemon's path, fast or pyHanko)."""
    return pades.prepare_and_sign(*args, **kwargs).pdf


def sign(pdf: bytes, stages: tuple[Stage, ...], pki: Pki, signer: Sign = signed_pdf) -> bytes:
    """`pdf` signed for each of `stages` in turn, by `signer`."""
    for stage in stages:
        template, raw_sign = pki.signers[stage]
        pdf = signer(
            pdf, stage, template, raw_sign, bytes_reserved=BYTES_RESERVED, signing_time=SIGNED_AT
        )
    return pdf


# Documents


def record(pages: int = 2, *, link: bool = False) -> bytes:
    """A homeroom record as a school's system writes it: classic xref table, PDF 1.3.

    `link` puts a link annotation on the first page, as a direct dictionary in its
    /Annots, as fpdf2 writes one.
    """
    pdf = FPDF()
    pdf.add_font("DejaVu", fname=str(FONT))
    for page in range(pages):
        pdf.add_page()
        pdf.set_font("DejaVu", size=14)
        pdf.cell(text=f"Học bạ số — trang {page + 1}", link="https://moet.gov.vn" if link else "")
    return bytes(pdf.output())


def rewritten(pdf: bytes, *, extensions: str | None = None) -> bytes:
    """`pdf` written again by pyHanko: an xref stream, its dictionaries in an object stream.

    With `extensions` ("plain" or "in_object_stream"), the catalogue also points at an
    /Extensions dictionary that already registers ESIC, so pyHanko leaves it in the
    first revision, where the fast path has to follow /Prev to find it.
    """
    # Imported here: a probe signs with this module and must find pyHanko not loaded.
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.pdf_utils.writer import copy_into_new_writer

    writer = copy_into_new_writer(PdfFileReader(BytesIO(pdf)), {"stream_xrefs": True})
    kept_plain = set()
    if extensions:
        esic = generic.DictionaryObject(
            {
                generic.pdf_name("/Type"): generic.pdf_name("/DeveloperExtensions"),
                generic.pdf_name("/BaseVersion"): generic.pdf_name("/1.7"),
                generic.pdf_name("/ExtensionLevel"): generic.NumberObject(1),
            }
        )
        ref = writer.add_object(generic.DictionaryObject({generic.pdf_name("/ESIC"): esic}))
        writer.root[generic.pdf_name("/Extensions")] = ref
        if extensions == "plain":
            kept_plain.add(ref.idnum)
    object_stream = writer.prepare_object_stream()
    for (generation, num), obj in list(writer.objects.items()):
        if generation or num in kept_plain or isinstance(obj, generic.StreamObject):
            continue
        object_stream.add_object(num, obj)
        writer.objs_in_streams[num] = obj
        del writer.objects[(generation, num)]
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def by_qpdf(pdf: bytes, tmp_path: Path, *options: str) -> bytes:
    """`pdf` written again by qpdf with `options`, e.g. --linearize."""
    source, target = tmp_path / "qpdf-in.pdf", tmp_path / "qpdf-out.pdf"
    source.write_bytes(pdf)
    subprocess.run(["qpdf", *options, str(source), str(target)], check=True, timeout=60)
    return target.read_bytes()


def fill_field(pdf: bytes, stage: Stage, pki: Pki) -> bytes:
    """`stage` signed on the fast path (daemon/pdf/certification.py for the first stage,
    daemon/pdf/incremental.py for the others) directly; raises Unsupported if it cannot."""
    template, raw_sign = pki.signers[stage]
    if stage is Stage.HOMEROOM_TEACHER:
        prepared = certification.prepare_certification(
            pdf, FIELD_NAMES, contents_bytes=template.size, signing_time=SIGNED_AT
        )
    else:
        prepared = incremental.prepare_signature(
            pdf,
            stage.field_name,
            contents_bytes=template.size,
            signing_time=SIGNED_AT,
            lock_fields=stage is Stage.SCHOOL_SEAL,
        )
    return prepared.complete(template.sign(prepared.document_digest, raw_sign))


def assert_validates_as_pyhanko(original: bytes, issued: bytes, pki: Pki) -> None:
    """`issued` validates exactly as `original` signed through pyHanko alone would."""
    by_pyhanko = sign(original, ORDER, pki, pades._prepare_and_sign_pyhanko)
    reports = validation.validate_pdf(issued, [pki.root], expected=3)
    assert reports == validation.validate_pdf(by_pyhanko, [pki.root], expected=3)
    assert [r.field_name for r in reports] == list(FIELD_NAMES)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    assert [r.docmdp_level for r in reports] == ["FILL_FORMS", None, "NO_CHANGES"]
    assert [r.modification_level for r in reports] == ["FORM_FILLING", "FORM_FILLING", "NONE"]
    assert [r.coverage for r in reports] == ["ENTIRE_REVISION", "ENTIRE_REVISION", "ENTIRE_FILE"]
