"""PAdES signatures on a record's PDF: intake check, signing one stage, validation.

The first stage creates all three signature fields in one incremental update, so the
seal's lock is in the document from the start, and certifies the document for form
filling; the later stages only fill their field. daemon/pdf/certification.py and
daemon/pdf/incremental.py write those updates without pyHanko; pyHanko writes what they
do not expect. This module knows nothing about the HSM: it signs with a CMS template
(daemon/pdf/cms.py) and any raw-signing function, and blocks, so call it from a worker.
pyHanko is imported where it is used: importing this module, or signing on the fast
paths, loads none of it, which keeps each HSM worker process tens of MB smaller.

A document whose catalogue asks for visible signatures (daemon/pdf/appearance.py) gets
them on both paths: the fields on their boxes, and each signature's appearance (who
signed, in what role, when) in the update that signs it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from datetime import datetime
from io import BytesIO
from typing import TYPE_CHECKING

from daemon.errors import ConfigError, NotAPdf
from daemon.pdf.appearance import Box, Stamp
from daemon.pdf.certification import prepare_certification
from daemon.pdf.cms import RawSign, SignedDataTemplate
from daemon.pdf.incremental import PreparedSignature, SignedPdf, prepare_signature
from daemon.pdf.syntax import Unsupported
from daemon.stages import FIELD_NAMES, Stage

if TYPE_CHECKING:
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.pdf_utils.rw_common import PdfHandler
    from pyhanko.sign.fields import SigFieldSpec
    from pyhanko.sign.signers.cms_embedder import SigMDPSetup

log = logging.getLogger(__name__)

PDF_MAGIC = b"%PDF-"
_BUILTIN_PARSE_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    AssertionError,
    RecursionError,
    ArithmeticError,  # decimal.InvalidOperation, on a number such as "."
)


def parse_errors() -> tuple[type[Exception], ...]:
    """What pyHanko's parser raises on hostile or broken input, found by fuzzing.

    Its own errors and a handful of built-in ones (even assertions). A function, so
    that pyHanko is imported only where it is used: a worker signing on the fast
    paths never loads it.
    """
    from pyhanko.pdf_utils.misc import PdfError

    return (PdfError, *_BUILTIN_PARSE_ERRORS)


def _field_specs(boxes: dict[str, Box] | None = None) -> list[SigFieldSpec]:
    from pyhanko.sign.fields import FieldMDPAction, FieldMDPSpec, MDPPerm, SigFieldSpec

    def where(name: str) -> dict[str, object]:
        if boxes is None:
            return {}
        return {"box": boxes[name].rect, "on_page": boxes[name].page}

    gvcn, hieu_truong, dau_truong = FIELD_NAMES
    # pyHanko reads lock settings from the field, not the signature: the seal's
    # field carries the FieldMDP lock and the DocMDP "no changes" upgrade.
    seal = SigFieldSpec(
        dau_truong,
        field_mdp_spec=FieldMDPSpec(FieldMDPAction.ALL),
        doc_mdp_update_value=MDPPerm.NO_CHANGES,
        **where(dau_truong),  # type: ignore[arg-type]
    )
    return [
        SigFieldSpec(gvcn, **where(gvcn)),  # type: ignore[arg-type]
        SigFieldSpec(hieu_truong, **where(hieu_truong)),  # type: ignore[arg-type]
        seal,
    ]


def read_pdf(pdf: bytes) -> PdfFileReader:
    if not pdf.startswith(PDF_MAGIC):
        raise NotAPdf("The document does not start with %PDF-.")
    from pyhanko.pdf_utils.reader import PdfFileReader

    try:
        reader = PdfFileReader(BytesIO(pdf), strict=False)
        # Touching the page tree makes a broken trailer or catalogue fail here.
        pages = int(reader.root["/Pages"]["/Count"])
    except parse_errors() as exc:
        raise NotAPdf(f"The document cannot be parsed as a PDF: {exc}") from exc
    if reader.encrypted:
        raise NotAPdf("The document is encrypted.")
    if pages < 1:
        raise NotAPdf("The document has no pages.")
    return reader


def _fields(reader: PdfFileReader) -> dict[str, bool]:
    """Signature field name -> filled, for every signature field in the document."""
    from pyhanko.sign.fields import enumerate_sig_fields

    try:
        return {
            name: value is not None
            for name, value, _ in enumerate_sig_fields(reader, filled_status=None)
        }
    except parse_errors() as exc:
        raise NotAPdf(f"The document's form cannot be read: {exc}") from exc


def inspect_pdf(pdf: bytes, max_bytes: int) -> None:
    """Accept a homeroom teacher's unsigned PDF, or raise NotAPdf saying why not."""
    if len(pdf) > max_bytes:
        raise NotAPdf(f"The document has {len(pdf)} bytes; the limit is {max_bytes}.")
    reader = read_pdf(pdf)
    _check_size(reader)
    fields = _fields(reader)
    if any(fields.values()) or reader.embedded_signatures:
        raise NotAPdf("The document is already signed.")
    taken = sorted(set(fields) & set(FIELD_NAMES))
    if taken:
        raise NotAPdf(f"The document already has signature fields {', '.join(taken)}.")


def _check_size(reader: PdfFileReader) -> None:
    """Refuse a trailer /Size at or below an object number the file uses.

    Object numbers for an update start at /Size, so signing such a file would write
    over objects it has: poppler's pdfunite makes such files, and pyHanko's lenient
    reader then signs a record whose second page has lost its font.
    """
    try:
        size = int(reader.trailer["/Size"])
        xrefs = reader.xrefs
        used = max(
            (ref.idnum for rev in range(xrefs.total_revisions)
             for ref in xrefs.explicit_refs_in_revision(rev)),
            default=0,
        )  # fmt: skip
    except parse_errors() as exc:
        raise NotAPdf(f"The document's cross-reference table cannot be read: {exc}") from exc
    if used >= size:
        raise NotAPdf(
            f"The document's trailer /Size ({size}) is not above its highest object number "
            f"({used}); the file is malformed (poppler's pdfunite writes such files). "
            "Save it again (e.g. with qpdf) and resend."
        )


def _sig_fields(pdf: PdfHandler) -> dict[str, generic.IndirectObject]:
    """Top-level signature fields by name, read without resolving their values.

    Resolving a filled field's /V would parse its signature's /Contents, a long hex
    string pyHanko reads a character at a time; whether /V is there is all we need.
    """
    try:
        root = pdf.root
        refs = root["/AcroForm"]["/Fields"] if "/AcroForm" in root else []
        fields = {}
        for ref in refs:
            field = ref.get_object()
            if "/FT" in field and field["/FT"] == "/Sig" and "/T" in field:
                fields[str(field["/T"])] = ref
        return fields
    except parse_errors() as exc:
        raise NotAPdf(f"The document's form cannot be read: {exc}") from exc


def _field_to_fill(stage: Stage, reader: PdfFileReader) -> generic.IndirectObject | None:
    """The empty field this stage signs; None for the first stage, which creates them."""
    fields = _sig_fields(reader)
    if stage is Stage.HOMEROOM_TEACHER:
        if set(fields) & set(FIELD_NAMES) or any("/V" in f.get_object() for f in fields.values()):
            raise NotAPdf("The document already has signature fields or signatures.")
        return None
    ref = fields.get(stage.field_name)
    if ref is None:
        raise NotAPdf(f"The document has no signature field {stage.field_name}.")
    if "/V" in ref.get_object():
        raise NotAPdf(f"The signature field {stage.field_name} is already signed.")
    return ref


@functools.cache
def _update_writer() -> type[IncrementalPdfFileWriter]:
    """An incremental writer that leaves the document information dictionary alone.

    pyHanko rewrites /Info (ModDate, Producer) in every revision, which costs a
    parse and a write per signature and tells a reader nothing the signature's /M
    does not; validators accept either. The class is made on first use, so that
    importing this module does not import pyHanko.
    """
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    class UpdateWriter(IncrementalPdfFileWriter):
        def _update_meta(self) -> None:
            pass

    return UpdateWriter


def _mdp_setup(stage: Stage) -> SigMDPSetup:
    """What pyHanko's PdfSigner derives from our fields: certify first, lock at the seal."""
    from pyhanko.sign.fields import FieldMDPAction, FieldMDPSpec, MDPPerm
    from pyhanko.sign.signers.cms_embedder import SigMDPSetup

    if stage is Stage.HOMEROOM_TEACHER:
        return SigMDPSetup("sha256", certify=True, docmdp_perms=MDPPerm.FILL_FORMS)
    if stage is Stage.SCHOOL_SEAL:
        lock = FieldMDPSpec(FieldMDPAction.ALL)
        return SigMDPSetup("sha256", field_lock=lock, docmdp_perms=MDPPerm.NO_CHANGES)
    return SigMDPSetup("sha256")


def prepare_and_sign(
    pdf: bytes,
    stage: Stage,
    template: SignedDataTemplate,
    raw_sign: RawSign,
    *,
    bytes_reserved: int,
    signing_time: datetime,
    unsigned_bytes: int = 0,
) -> SignedPdf:
    """The PDF with one more PAdES B-B signature, for `stage`, and its SHA-256.

    `unsigned_bytes` leaves that much room after the CMS in /Contents, for unsigned
    attributes added once it is signed (a signature timestamp, daemon/ltv/timestamps.py).

    The signature is an incremental update, what pyHanko's PdfSigner would write
    (fields, DocMDP/FieldMDP references, byte range); the CMS comes from the signer's
    template, whose size is exact, so nothing is estimated. daemon/pdf/certification.py
    writes the first stage and daemon/pdf/incremental.py the later ones, reading only the
    objects they change and hashing as they write; pyHanko writes any document those
    modules do not expect, refusing it if it must.
    """
    contents_bytes = template.size + unsigned_bytes
    stamp = Stamp.of(stage, template.signer_cert, signing_time)
    try:
        prepared = _prepare_fast(pdf, stage, contents_bytes, signing_time, stamp)
    except Unsupported as exc:
        log.debug("Signing stage %s with pyHanko: %s", stage.value, exc)
    else:
        _check_reserved(contents_bytes, bytes_reserved)
        return prepared.signed(_cms(template, prepared.document_digest, raw_sign))
    signed = _prepare_and_sign_pyhanko(
        pdf,
        stage,
        template,
        raw_sign,
        bytes_reserved=bytes_reserved,
        signing_time=signing_time,
        contents_bytes=contents_bytes,
    )
    return SignedPdf(signed, hashlib.sha256(signed).digest())


def _prepare_fast(
    pdf: bytes, stage: Stage, contents_bytes: int, signing_time: datetime, stamp: Stamp
) -> PreparedSignature:
    """The update as pyHanko would write it, by daemon/pdf/certification.py or incremental.py."""
    if stage is Stage.HOMEROOM_TEACHER:
        return prepare_certification(
            pdf,
            FIELD_NAMES,
            contents_bytes=contents_bytes,
            signing_time=signing_time,
            stamp=stamp,
        )
    return prepare_signature(
        pdf,
        stage.field_name,
        contents_bytes=contents_bytes,
        signing_time=signing_time,
        lock_fields=stage is Stage.SCHOOL_SEAL,
        stamp=stamp,
    )


def _check_reserved(contents_bytes: int, bytes_reserved: int) -> None:
    if contents_bytes > bytes_reserved:
        raise ConfigError(
            f"A signature needs {contents_bytes} bytes; signing.bytes_reserved is {bytes_reserved}."
        )


def _cms(template: SignedDataTemplate, document_digest: bytes, raw_sign: RawSign) -> bytes:
    """The CMS for this digest; a template error refuses the document.

    The pyHanko path has always reported it so (its `except` covers the signing call),
    and both paths must fail the same way.
    """
    try:
        return template.sign(document_digest, raw_sign)
    except parse_errors() as exc:
        raise NotAPdf(f"The document cannot be signed: {exc}") from exc


def _append_only(writer: IncrementalPdfFileWriter) -> None:
    """/SigFlags 3 (SignaturesExist | AppendOnly), as certification.py writes it.

    pyHanko sets it so whenever it writes a signature, so a document timestamp added
    after the seal (B-LTA) changes nothing in the form. Unlike pyHanko's
    `ensure_sig_flags`, a form's /NeedAppearances is kept: removing it changes how
    viewers draw the form's fields (LibreOffice forms).
    """
    from pyhanko.pdf_utils import generic

    form = writer.root["/AcroForm"]
    form["/SigFlags"] = generic.NumberObject(3)
    writer.update_container(form)


def _prepare_and_sign_pyhanko(
    pdf: bytes,
    stage: Stage,
    template: SignedDataTemplate,
    raw_sign: RawSign,
    *,
    bytes_reserved: int,
    signing_time: datetime,
    contents_bytes: int | None = None,
) -> bytes:
    """`prepare_and_sign` with pyHanko reading the whole document and writing the update."""
    from pyhanko.sign.fields import SigSeedSubFilter, append_signature_field
    from pyhanko.sign.signers import constants
    from pyhanko.sign.signers.pdf_byterange import SignatureObject

    from daemon.pdf import visible_pyhanko as visible
    from daemon.pdf.annotations import relink_in_writer

    reader = read_pdf(pdf)
    field_ref = _field_to_fill(stage, reader)
    contents_bytes = contents_bytes or template.size
    _check_reserved(contents_bytes, bytes_reserved)
    reserved = 2 * contents_bytes  # hex digits
    stamp = Stamp.of(stage, template.signer_cert, signing_time)
    try:
        writer = _update_writer().from_reader(reader)
        writer.register_extension(constants.ESIC_EXTENSION_1)
        if field_ref is None:
            relink_in_writer(writer)  # before the fields, as certification.py numbers them
            boxes = visible.boxes(reader)
            for spec in _field_specs(boxes):
                append_signature_field(writer, spec)
            _append_only(writer)
            if boxes is not None:
                visible.add_signature_font(writer)
            field_ref = _sig_fields(writer)[stage.field_name]
        visible.add_appearance(writer, field_ref, stamp)
        signature = SignatureObject(
            timestamp=signing_time, subfilter=SigSeedSubFilter.PADES, bytes_reserved=reserved
        )
        signature_ref = writer.add_object(signature)
        field_ref.get_object()["/V"] = signature_ref
        writer.mark_update(field_ref)
        _mdp_setup(stage).apply(signature_ref, writer)
        filling = signature.fill(writer, "sha256")
        prepared, output = next(filling)
        filling.send(template.sign(prepared.document_digest, raw_sign))
    except parse_errors() as exc:  # SigningError is a ValueError
        raise NotAPdf(f"The document cannot be signed: {exc}") from exc
    assert isinstance(output, BytesIO)  # fill() without an output writes a new BytesIO
    return output.getvalue()
