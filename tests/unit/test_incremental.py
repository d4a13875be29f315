"""Stages 2 and 3 through daemon/incremental.py: the signatures pyHanko would have written.

Software RSA keys and a self-made PKI stand in for the HSM. Each record is signed
twice from the same teacher-signed document, once by the fast path and once by the
pyHanko path, and pyHanko's validator must report the same for both; poppler's pdfsig
must accept them. Documents the fast path does not expect go to pyHanko, which signs
or refuses them as it always has.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from fpdf import FPDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import copy_into_new_writer

from daemon import incremental, pades
from daemon.cms import RawSign, SignedDataTemplate
from daemon.errors import ConfigError, NotAPdf
from daemon.incremental import ContentsTooLarge, Ref, Unsupported, read_object
from daemon.stages import ORDER, Stage
from tests.hsm_fixtures import FONT

SIGNED_AT = datetime(2025, 9, 5, 8, 30, tzinfo=UTC)
BYTES_RESERVED = 16 * 1024
LATER_STAGES = (Stage.PRINCIPAL, Stage.SCHOOL_SEAL)
Sign = Callable[..., bytes]  # prepare_and_sign's signature


@dataclass(frozen=True)
class Pki:
    root: asn1_x509.Certificate
    signers: dict[Stage, tuple[SignedDataTemplate, RawSign]]


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A root CA and one software-key signer per stage."""
    root_key = _rsa_key()
    root = _certificate("Hocba Test Root", root_key, "Hocba Test Root", root_key, ca=True)
    signers = {}
    for stage in ORDER:
        key = _rsa_key()
        cert = _certificate(f"Signer {stage.value}", key, "Hocba Test Root", root_key, ca=False)
        signers[stage] = (SignedDataTemplate.for_signer(cert, [root]), _raw_signer(key))
    return Pki(root, signers)


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey, ca: bool
) -> asn1_x509.Certificate:
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
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


# Documents


def _record(pages: int = 2) -> bytes:
    """A homeroom record as a school's system writes it: classic xref table, PDF 1.3."""
    pdf = FPDF()
    pdf.add_font("DejaVu", fname=str(FONT))
    for page in range(pages):
        pdf.add_page()
        pdf.set_font("DejaVu", size=14)
        pdf.cell(text=f"Học bạ số — trang {page + 1}")
    return bytes(pdf.output())


def _rewritten(pdf: bytes, *, extensions: str | None = None) -> bytes:
    """`pdf` written again by pyHanko: an xref stream, its dictionaries in an object stream.

    With `extensions` ("plain" or "in_object_stream"), the catalogue also points at an
    /Extensions dictionary that already registers ESIC, so pyHanko leaves it in the
    first revision, where the fast path has to follow /Prev to find it.
    """
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


def _png_predicted(pdf: bytes) -> bytes:
    """`pdf` with its last xref stream PNG-predicted (/Predictor 12), as qpdf writes them.

    Every row uses the filter Up, as qpdf writes it; the stream keeps its offset, so
    nothing else in the file moves.
    """
    startxref = int(re.findall(rb"startxref\s+(\d+)\s+%%EOF", pdf)[-1])
    head, _, rest = pdf[startxref:].partition(b"/Length ")
    length, _, rest = rest.partition(b"\n>>\nstream\n")
    rows = zlib.decompress(rest[: int(length)])
    data = zlib.compress(_png_encode(rows, columns=11))
    params = b"/Filter /FlateDecode\n/DecodeParms << /Columns 11 /Predictor 12 >>\n"
    head = head.replace(b"/Filter /FlateDecode\n", params)
    tail = b"\nendstream\nendobj\n\nstartxref\n%d\n%%%%EOF\n" % startxref
    return pdf[:startxref] + head + b"/Length %d\n>>\nstream\n" % len(data) + data + tail


def _png_encode(data: bytes, columns: int) -> bytes:
    out, above = bytearray(), bytes(columns)
    for at in range(0, len(data), columns):
        row = data[at : at + columns]
        out += b"\x02" + bytes((x - up) & 0xFF for x, up in zip(row, above, strict=True))
        above = row
    return bytes(out)


ORIGINALS = {
    "classic_xref_table": _record,
    "object_streams": lambda: _rewritten(_record()),
    "png_predicted_xref_stream": lambda: _png_predicted(_rewritten(_record(), extensions="plain")),
}


def _sign(
    pdf: bytes, stages: tuple[Stage, ...], pki: Pki, sign: Sign = pades.prepare_and_sign
) -> bytes:
    for stage in stages:
        template, raw_sign = pki.signers[stage]
        pdf = sign(
            pdf, stage, template, raw_sign, bytes_reserved=BYTES_RESERVED, signing_time=SIGNED_AT
        )
    return pdf


def _fast(pdf: bytes, stage: Stage, pki: Pki) -> bytes:
    """`stage` signed by daemon/incremental.py directly; raises Unsupported if it cannot."""
    template, raw_sign = pki.signers[stage]
    prepared = incremental.prepare_signature(
        pdf,
        stage.field_name,
        contents_bytes=template.size,
        signing_time=SIGNED_AT,
        lock_fields=stage is Stage.SCHOOL_SEAL,
    )
    return prepared.complete(template.sign(prepared.document_digest, raw_sign))


@pytest.fixture(scope="module", params=sorted(ORIGINALS))
def teacher_signed(request: pytest.FixtureRequest, pki: Pki) -> bytes:
    """A record as stage 1 (pyHanko) leaves it, for each kind of original document."""
    return _sign(ORIGINALS[request.param](), (Stage.HOMEROOM_TEACHER,), pki)


@pytest.fixture(scope="module")
def plain_teacher_signed(pki: Pki) -> bytes:
    """A record from a classic PDF as stage 1 leaves it."""
    return _sign(_record(), (Stage.HOMEROOM_TEACHER,), pki)


# Signing


def test_later_stages_take_the_fast_path_and_validate_as_pyhanko_does(
    teacher_signed: bytes, pki: Pki
) -> None:
    # When the principal and the seal sign, through prepare_and_sign and through pyHanko
    principal = _sign(teacher_signed, (Stage.PRINCIPAL,), pki)
    issued = _sign(principal, (Stage.SCHOOL_SEAL,), pki)
    by_pyhanko = _sign(teacher_signed, LATER_STAGES, pki, pades._prepare_and_sign_pyhanko)

    # Then prepare_and_sign wrote exactly what the fast path writes (it is deterministic)
    assert principal == _fast(teacher_signed, Stage.PRINCIPAL, pki)
    assert issued == _fast(principal, Stage.SCHOOL_SEAL, pki)
    # ... and pyHanko's validator finds the same three signatures in both records
    reports = pades.validate_pdf(issued, [pki.root], expected=3)
    assert reports == pades.validate_pdf(by_pyhanko, [pki.root], expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    assert [r.docmdp_level for r in reports] == ["FILL_FORMS", None, "NO_CHANGES"]
    assert [r.modification_level for r in reports] == ["FORM_FILLING", "FORM_FILLING", "NONE"]
    assert [r.coverage for r in reports] == ["ENTIRE_REVISION", "ENTIRE_REVISION", "ENTIRE_FILE"]
    assert issued.startswith(principal) and principal.startswith(teacher_signed)


def test_each_update_keeps_the_kind_of_xref_section(teacher_signed: bytes, pki: Pki) -> None:
    principal = _fast(teacher_signed, Stage.PRINCIPAL, pki)
    issued = _fast(principal, Stage.SCHOOL_SEAL, pki)
    startxref = int(re.findall(rb"startxref\s+(\d+)", teacher_signed)[-1])
    uses_streams = not teacher_signed.startswith(b"xref", startxref)
    for before, after in ((teacher_signed, principal), (principal, issued)):
        update = after[len(before) :]
        assert (b"/Type /XRef" in update) is uses_streams
        assert (b"\nxref\n" in update) is not uses_streams


def test_pdfsig_accepts_every_signature(teacher_signed: bytes, pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "issued.pdf"
    path.write_bytes(_sign(teacher_signed, LATER_STAGES, pki))
    result = subprocess.run(
        ["pdfsig", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.count("Signature Validation: Signature is Valid.") == 3, result.stdout
    assert "Total document signed" in result.stdout


def test_the_same_request_gives_the_same_bytes(pki: Pki) -> None:
    teacher_signed = _sign(_record(), (Stage.HOMEROOM_TEACHER,), pki)
    once = _fast(teacher_signed, Stage.PRINCIPAL, pki)
    assert _fast(teacher_signed, Stage.PRINCIPAL, pki) == once
    template, raw_sign = pki.signers[Stage.PRINCIPAL]
    later = pades.prepare_and_sign(
        teacher_signed,
        Stage.PRINCIPAL,
        template,
        raw_sign,
        bytes_reserved=BYTES_RESERVED,
        signing_time=SIGNED_AT + timedelta(seconds=1),
    )
    assert later != once
    assert b"/M (D:20250905083001Z)" in later[len(teacher_signed) :]


def test_a_change_after_the_seal_is_detected(pki: Pki) -> None:
    issued = _sign(_record(), ORDER, pki)

    # When someone appends an update that draws on the page
    writer = IncrementalPdfFileWriter(BytesIO(issued))
    stream = generic.StreamObject(stream_data=b"0 0 m 100 100 l S")
    writer.add_stream_to_page(0, writer.add_object(stream))
    out = BytesIO()
    writer.write(out)

    # Then every signature is still intact, but the seal does not accept the change
    reports = pades.validate_pdf(out.getvalue(), [pki.root])
    assert all(r.intact and r.valid for r in reports)
    seal = reports[-1]
    assert (seal.docmdp_ok, seal.bottom_line, seal.modification_level) == (False, False, "OTHER")


def test_a_cms_longer_than_reserved_is_refused_and_a_shorter_one_padded(pki: Pki) -> None:
    teacher_signed = _sign(_record(), (Stage.HOMEROOM_TEACHER,), pki)
    prepared = incremental.prepare_signature(
        teacher_signed, "HieuTruong", contents_bytes=64, signing_time=SIGNED_AT, lock_fields=False
    )
    with pytest.raises(ContentsTooLarge):
        prepared.complete(bytes(65))
    assert b"/Contents <ABCD" + b"0" * 124 + b">" in prepared.complete(b"\xab\xcd")


# What the fast path leaves to pyHanko


def test_a_signed_field_is_refused(pki: Pki) -> None:
    principal = _sign(_record(), (Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL), pki)
    with pytest.raises(Unsupported, match="already signed"):
        _fast(principal, Stage.PRINCIPAL, pki)
    with pytest.raises(NotAPdf, match="HieuTruong is already signed"):
        _sign(principal, (Stage.PRINCIPAL,), pki)


def test_a_document_without_the_fields_is_refused(pki: Pki) -> None:
    unsigned = _rewritten(_record(), extensions="plain")
    with pytest.raises(Unsupported):
        _fast(unsigned, Stage.PRINCIPAL, pki)
    with pytest.raises(NotAPdf, match="no signature field HieuTruong"):
        _sign(unsigned, (Stage.PRINCIPAL,), pki)


@pytest.mark.parametrize("stage", [Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL])
def test_too_little_reserved_space_is_a_configuration_error(
    pki: Pki, plain_teacher_signed: bytes, stage: Stage
) -> None:
    pdf = _record() if stage is Stage.HOMEROOM_TEACHER else plain_teacher_signed
    template, raw_sign = pki.signers[stage]
    with pytest.raises(ConfigError, match=r"signing\.bytes_reserved is 1000"):
        pades.prepare_and_sign(
            pdf, stage, template, raw_sign, bytes_reserved=1000, signing_time=SIGNED_AT
        )


def test_an_object_in_an_object_stream_goes_to_pyhanko(pki: Pki) -> None:
    # Given a record whose catalogue's /Extensions lives in an object stream
    original = _rewritten(_record(), extensions="in_object_stream")
    teacher_signed = _sign(original, (Stage.HOMEROOM_TEACHER,), pki)
    with pytest.raises(Unsupported, match="in an object stream"):
        _fast(teacher_signed, Stage.PRINCIPAL, pki)

    # When the later stages sign, Then pyHanko signs them and they validate
    reports = pades.validate_pdf(_sign(teacher_signed, LATER_STAGES, pki), [pki.root], expected=3)
    assert all(r.bottom_line for r in reports)


def test_bytes_after_eof_go_to_pyhanko(pki: Pki) -> None:
    teacher_signed = _sign(_record(), (Stage.HOMEROOM_TEACHER,), pki) + b"garbage\n"
    with pytest.raises(Unsupported, match="does not end with startxref"):
        _fast(teacher_signed, Stage.PRINCIPAL, pki)
    reports = pades.validate_pdf(_sign(teacher_signed, LATER_STAGES, pki), [pki.root], expected=3)
    assert all(r.intact and r.valid for r in reports)


@pytest.mark.parametrize(
    ("breakage", "fast_reason", "reason"),
    [
        ("startxref", "No object at byte", "Could not find xref table"),
        ("truncated", "does not end with startxref", "EOF marker not found"),
        ("not_a_pdf", "does not start with a %PDF- header", "does not start with %PDF-"),
    ],
)
def test_a_broken_document_is_refused_as_before(
    pki: Pki, breakage: str, fast_reason: str, reason: str
) -> None:
    pdf = _sign(_record(), (Stage.HOMEROOM_TEACHER,), pki)
    if breakage == "startxref":
        found = list(re.finditer(rb"startxref\n(\d+)\n", pdf))[-1]
        pdf = pdf[: found.start(1)] + b"%d" % (int(found[1]) - 7) + pdf[found.end(1) :]
    elif breakage == "truncated":
        pdf = pdf[: len(pdf) - 300]
    else:
        pdf = b"GIF89a" + pdf[5:]
    with pytest.raises(Unsupported, match=fast_reason):
        _fast(pdf, Stage.PRINCIPAL, pki)
    with pytest.raises(NotAPdf, match=reason):
        _sign(pdf, (Stage.PRINCIPAL,), pki)


lenient = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)


@lenient
@given(st.data())
def test_mutated_input_is_signed_or_left_to_pyhanko(
    pki: Pki, plain_teacher_signed: bytes, data: st.DataObject
) -> None:
    # The fast path reads the last kilobytes of the file; mutate them.
    pdf = bytearray(plain_teacher_signed)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(len(pdf) - 2000, len(pdf) - 1))
        pdf[at] = data.draw(st.sampled_from(b"0123456789 \n<>[]()/%RobjxrefA"))
    try:
        _fast(bytes(pdf), Stage.PRINCIPAL, pki)
    except Unsupported:
        pass


# The object reader


@pytest.mark.parametrize(
    ("source", "value"),
    [
        (b"<</Type/Sig/Size 12>>", {"Type": "Sig", "Size": 12}),
        (b"  % a comment\n [ 3 0 R 4 -5 +6 2.5 -.5 ]", [Ref(3, 0), 4, -5, 6, 2.5, -0.5]),
        (b"/A#20b#23", "A b#"),
        (b"/", ""),
        (b"(a (nested) \\(escaped\\) \\n \\053 \\7)", b"a (nested) (escaped) \n + \x07"),
        (b"(line\r\nbreaks\rand \\\r\ncontinued)", b"line\nbreaks\nand continued"),
        (b"<48 65 6c 6C 6>", b"Hell`"),
        (b"[true false null]", [True, False, None]),
        (b"<< /K [ << /V 1 0 R >> ] >>", {"K": [{"V": Ref(1, 0)}]}),
    ],
)
def test_objects_are_read(source: bytes, value: object) -> None:
    assert read_object(source) == (value, len(source))


@pytest.mark.parametrize(
    "source",
    [
        *(b"<</A>>", b"<<1 2>>", b"[1 2", b"(open", b"]", b"<</A 1]", b"<zz>", b"1e5"),
        *(b"[1 0 obj]", b"[" * 40, b"(\\"),
    ],
)
def test_malformed_objects_are_refused(source: bytes) -> None:
    with pytest.raises(Unsupported):
        read_object(source)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_are_read_or_refused(source: bytes) -> None:
    try:
        read_object(source)
    except Unsupported:
        pass


def test_the_signing_path_loads_no_pyhanko_signing_code() -> None:
    probe = (
        "import sys, daemon.pades, daemon.incremental; "
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('pyhanko.sign')}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "[]"
