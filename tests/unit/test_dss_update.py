"""The seal's LTV update written by hand: a DSS and a document timestamp, as pyHanko writes them."""

from __future__ import annotations

import hashlib
from io import BytesIO

import pytest
from asn1crypto import cms
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.signers.pdf_signer import PdfTimeStamper
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko.sign.validation import validate_pdf_timestamp
from pyhanko.sign.validation.dss import DocumentSecurityStore
from pyhanko_certvalidator import ValidationContext

from daemon.pdf import validation
from daemon.pdf.dss_update import Unsupported, ValidationData, read_ltv_target
from daemon.stages import ORDER
from tests.unit.ltv_kit import LtvServices
from tests.unit.pyhanko_compare import same_object, update_objects
from tests.unit.signing_kit import Pki, make_pki, record, rewritten, sign

CONTENTS_BYTES = 8192
RECORDS = {
    "classic_xref_table": record,
    "link_on_first_page": lambda: record(link=True),
    "object_streams": lambda: rewritten(record()),
}


class _AuthorityStamper(TimeStamper):
    """pyHanko's TimeStamper answered by the same authority, for the reference update."""

    def __init__(self, services: LtvServices) -> None:
        super().__init__()
        self._services = services

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        return cms.ContentInfo.load(self._services.token(message_digest))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> LtvServices:
    return LtvServices(tmp_path_factory.mktemp("ltv-pki"))


@pytest.fixture(scope="module", params=sorted(RECORDS))
def sealed(request: pytest.FixtureRequest, pki: Pki) -> bytes:
    """A record signed through its three stages (B-B, software keys)."""
    return sign(RECORDS[request.param](), ORDER, pki)


def _signers(sealed: bytes) -> list[asn1_x509.Certificate]:
    """Each signature's signing certificate (its CMS also carries the root)."""
    signed = [cms.ContentInfo.load(der, strict=False) for der in read_ltv_target(sealed).signatures]
    return [
        c.chosen
        for s in signed
        for c in s["content"]["certificates"]
        if c.chosen.subject != c.chosen.issuer
    ]


def _data(sealed: bytes, pki: Pki, services: LtvServices) -> ValidationData:
    certs = [pki.root, services.ca, services.tsa_cert, *_signers(sealed)]
    return ValidationData([c.dump() for c in certs], [], [services.crl])


def _timestamped(sealed: bytes, data: ValidationData, services: LtvServices) -> bytes:
    prepared = read_ltv_target(sealed).prepare_timestamp(data, CONTENTS_BYTES)
    assert (
        prepared.document_digest
        == hashlib.sha256(
            prepared.document + prepared.before_contents + prepared.after_contents
        ).digest()
    )
    return prepared.complete(services.token(prepared.document_digest))


def _by_pyhanko(sealed: bytes, data: ValidationData, services: LtvServices) -> bytes:
    writer = IncrementalPdfFileWriter(BytesIO(sealed), strict=False)
    DocumentSecurityStore.supply_dss_in_writer(
        writer,
        None,
        certs=[asn1_x509.Certificate.load(der) for der in data.certs],
        crls=[asn1_crl.CertificateList.load(der) for der in data.crls],
    )
    stamper = PdfTimeStamper(_AuthorityStamper(services), field_name="DocTimeStamp")
    out = stamper.timestamp_pdf(writer, "sha256", bytes_reserved=2 * CONTENTS_BYTES)
    return bytes(out.getvalue())


def test_the_update_is_the_one_pyhanko_writes(
    sealed: bytes, pki: Pki, services: LtvServices
) -> None:
    # Given a sealed record and the validation data of its signatures and the TSA
    data = _data(sealed, pki, services)

    # When the DSS and the document timestamp are written by hand, and by pyHanko
    ours = PdfFileReader(BytesIO(_timestamped(sealed, data, services)), strict=False)
    theirs = PdfFileReader(BytesIO(_by_pyhanko(sealed, data, services)), strict=False)

    # Then both revisions change the same objects (pyHanko also touches /Info), each to
    # the same value, the new objects they point at (the DSS and its streams, the
    # field, the timestamp's dictionary) compared by value
    old = int(PdfFileReader(BytesIO(sealed), strict=False).trailer["/Size"])

    def changed(reader: PdfFileReader) -> set[generic.Reference]:
        refs = update_objects(reader)
        return {r for r in refs if r.idnum < old and "/Producer" not in reader.get_object(r)}

    assert changed(ours) == changed(theirs) and changed(ours)
    for ref in changed(theirs):
        assert same_object(ours.get_object(ref), theirs.get_object(ref), old), ref
    # and ours numbers its new objects from the trailer's /Size on, with no gap
    new = {r.idnum for r in update_objects(ours)} - {r.idnum for r in changed(ours)}
    new |= _streams(ours)
    assert new == set(range(old, old + len(new)))
    # and the DSS holds exactly the data given, each item a stream of its DER
    dss = ours.root["/DSS"]
    assert [bytes(s.get_object().data) for s in dss["/Certs"]] == data.certs
    assert [bytes(s.get_object().data) for s in dss["/CRLs"]] == data.crls
    assert "/OCSPs" not in dss and "/VRI" not in dss
    assert DocumentSecurityStore.read_dss(ours).certs.keys() == (
        DocumentSecurityStore.read_dss(theirs).certs.keys()
    )


def test_the_document_timestamp_covers_the_whole_file_and_validates(
    sealed: bytes, pki: Pki, services: LtvServices
) -> None:
    stamped = _timestamped(sealed, _data(sealed, pki, services), services)
    reader = PdfFileReader(BytesIO(stamped), strict=False)

    # The field: an invisible widget on the first page, in the form, signed by a timestamp
    (stamp,) = reader.embedded_timestamp_signatures
    field = stamp.sig_field
    assert field["/FT"] == "/Sig" and field["/T"] == "DocTimeStamp"
    assert field["/Subtype"] == "/Widget" and field["/F"] == 132
    assert list(field["/Rect"]) == [0, 0, 0, 0]
    first_page = reader.root["/Pages"]["/Kids"][0]
    assert field["/P"].get_object() == first_page.get_object()
    annots = [a.get_object().get("/T") for a in first_page.get_object()["/Annots"]]
    assert annots.count("DocTimeStamp") == 1
    form = [f.get_object().get("/T") for f in reader.root["/AcroForm"]["/Fields"]]
    assert form == ["GVCN", "HieuTruong", "DauTruong", "DocTimeStamp"]
    assert stamp.sig_object["/SubFilter"] == "/ETSI.RFC3161"
    start, first, second, rest = stamp.sig_object["/ByteRange"]
    assert (start, second + rest) == (0, len(stamped)) and second - first == 2 * CONTENTS_BYTES + 2

    # pyHanko validates it, covering the entire file, and the three signatures still do
    context = ValidationContext(trust_roots=[services.ca])
    status = validate_pdf_timestamp(stamp, validation_context=context)
    assert status.intact and status.valid and status.trusted
    assert status.coverage.name == "ENTIRE_FILE"
    # pyHanko validates the three signatures, each change after them allowed: for the
    # inline links of "link_on_first_page" too, which stage 1 made objects of their own
    # (daemon/pdf/annotations.py), and pyHanko's own update is judged the same
    reports = validation.validate_pdf(stamped, [pki.root], expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)
    levels = ["FORM_FILLING", "FORM_FILLING", "LTA_UPDATES"]
    assert [r.modification_level for r in reports] == levels
    by_pyhanko = _by_pyhanko(sealed, _data(sealed, pki, services), services)
    assert reports == validation.validate_pdf(by_pyhanko, [pki.root], expected=3)


def test_a_tampered_byte_fails_the_document_timestamp(
    sealed: bytes, pki: Pki, services: LtvServices
) -> None:
    data = _data(sealed, pki, services)
    stamped = _timestamped(sealed, data, services)
    # A byte of the TSA's certificate as the DSS holds it, inside the byte range
    at = stamped.index(data.certs[2], len(sealed)) + 200
    tampered = stamped[:at] + bytes([stamped[at] ^ 0x01]) + stamped[at + 1 :]

    (stamp,) = PdfFileReader(BytesIO(tampered), strict=False).embedded_timestamp_signatures
    status = validate_pdf_timestamp(
        stamp, validation_context=ValidationContext(trust_roots=[services.ca])
    )
    assert not status.intact


def test_b_lt_adds_the_dss_alone(sealed: bytes, pki: Pki, services: LtvServices) -> None:
    data = _data(sealed, pki, services)
    extended = read_ltv_target(sealed).dss_update(data)

    reader = PdfFileReader(BytesIO(extended), strict=False)
    assert extended.startswith(sealed) and not reader.embedded_timestamp_signatures
    assert len(DocumentSecurityStore.read_dss(reader).certs) == len(data.certs)
    reports = validation.validate_pdf(extended, [pki.root], expected=3)
    assert all(r.intact and r.valid and r.trusted and r.bottom_line for r in reports)


def test_the_signatures_are_read_and_a_renewal_is_left_to_pyhanko(
    sealed: bytes, pki: Pki, services: LtvServices
) -> None:
    # The three signatures, in the fields' order, each by its stage's signer
    names = [c.subject.native["common_name"] for c in _signers(sealed)]
    assert names == [f"Signer {stage.value}" for stage in ORDER]

    data = _data(sealed, pki, services)
    with pytest.raises(Unsupported, match="DSS"):
        read_ltv_target(read_ltv_target(sealed).dss_update(data))
    with pytest.raises(Unsupported):
        read_ltv_target(_timestamped(sealed, data, services))


def _streams(reader: PdfFileReader) -> set[int]:
    """The new stream objects (update_objects leaves them out), by number."""
    dss = reader.root["/DSS"]
    return {ref.idnum for key in ("/Certs", "/OCSPs", "/CRLs") for ref in dss.get(key, [])}


def test_the_dss_entries_are_streams_of_plain_der(
    sealed: bytes, pki: Pki, services: LtvServices
) -> None:
    stamped = _timestamped(sealed, _data(sealed, pki, services), services)
    dss = PdfFileReader(BytesIO(stamped), strict=False).root["/DSS"]
    for stream in dss["/Certs"]:
        assert isinstance(stream.get_object(), generic.StreamObject)
        assert "/Filter" not in stream.get_object()
