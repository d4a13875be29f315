"""Writes the committed bad PDFs and raw bodies of the corpus; rerun to regenerate them.

    .venv/bin/python -m tests.corpus.generate

Every file stays small (a few kB); the big cases (a message over the size limit, a PDF
with a stream larger than the document limit) are built at test time by `cases.py`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fpdf import FPDF
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import signers
from pyhanko.sign.fields import SigFieldSpec, append_signature_field

HERE = Path(__file__).parent


def plain_pdf(text: str = "Hoc ba so - corpus") -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text=text)
    return bytes(pdf.output())


def encrypted_pdf() -> bytes:
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner-secret", user_password="")
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="encrypted")
    return bytes(pdf.output())


def _self_signed() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unrelated signer")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def signed_unrelated_pdf(tmp: Path) -> bytes:
    """A PDF already carrying someone else's signature in a field of its own name."""
    key_pem, cert_pem = _self_signed()
    (tmp / "k.pem").write_bytes(key_pem)
    (tmp / "c.pem").write_bytes(cert_pem)
    signer = signers.SimpleSigner.load(str(tmp / "k.pem"), str(tmp / "c.pem"))
    assert signer is not None
    writer = IncrementalPdfFileWriter(BytesIO(plain_pdf("already signed")))
    meta = signers.PdfSignatureMetadata(field_name="Signature1")
    out = signers.sign_pdf(writer, meta, signer=signer)
    return out.getvalue()


def field_named_gvcn_pdf() -> bytes:
    """An unsigned PDF that already has a field with the teacher's field name."""
    writer = IncrementalPdfFileWriter(BytesIO(plain_pdf("has a GVCN field")))
    append_signature_field(writer, SigFieldSpec("GVCN"))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def deep_nesting_pdf(depth: int = 5_000) -> bytes:
    """A catalogue whose page tree is an array nested `depth` levels deep."""
    nested = b"[" * depth + b"]" * depth
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids " + nested + b" >>",
    ]
    return _assemble(objects)


def self_referencing_pages_pdf() -> bytes:
    """A page tree whose only kid is itself: a loop for any naive walker."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids [2 0 R] /Parent 2 0 R >>",
    ]
    return _assemble(objects)


def _assemble(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def pdfs(tmp: Path) -> dict[str, bytes]:
    valid = plain_pdf()
    return {
        "not_a_pdf.pdf": b"GIF89a\x01\x00\x01\x00 this is an image, not a record",
        "magic_only.pdf": b"%PDF-1.7\n%%EOF\n",
        "truncated.pdf": valid[: len(valid) // 2],
        "no_trailer.pdf": valid[: valid.rindex(b"trailer")],
        "encrypted.pdf": encrypted_pdf(),
        "signed_unrelated.pdf": signed_unrelated_pdf(tmp),
        "field_gvcn_exists.pdf": field_named_gvcn_pdf(),
        "deep_nesting.pdf": deep_nesting_pdf(),
        "self_referencing_pages.pdf": self_referencing_pages_pdf(),
    }


def bodies() -> dict[str, bytes]:
    return {
        "empty.bin": b"",
        "not_json.txt": b"please sign this record",
        "truncated.json": b'{"type": "hocba.sign_request.v1", "request_id": "7d4a',
        "not_utf8.bin": b"\xff\xfe{\x00}\x00",
        "json_array.json": b"[1, 2, 3]",
        "json_null.json": b"null",
        "json_string.json": json.dumps("hocba.sign_request.v1").encode(),
        "huge_integer.json": b'{"type": "hocba.sign_request.v1", "grade": ' + b"9" * 5000 + b"}",
        "nan.json": b'{"type": "hocba.sign_request.v1", "record": {"grade": NaN}}',
    }


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        written = {f"pdfs/{k}": v for k, v in pdfs(Path(tmp)).items()}
    written.update({f"bodies/{k}": v for k, v in bodies().items()})
    for name, data in written.items():
        (HERE / name).write_bytes(data)
    print(f"Wrote {len(written)} files under {HERE}.")


if __name__ == "__main__":
    main()
