"""Checks of an ASiC-E package, as the ministry makes them: structure, manifest, CAdES, PDFs.

Used by the ministry simulator and by `hocba-signer verify PACKAGE.asice`. Every
problem found is reported with a code and a message naming the entry at fault;
nothing here raises on hostile input. Blocks (ZIP reading, validation): run it in a
thread or a worker process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from asn1crypto import cms, x509
from pyhanko.sign.validation import async_validate_detached_cms

from daemon.packaging import container
from daemon.pdf import validation
from daemon.stages import FIELD_NAMES

_REQUIRED_ATTRS = ("content_type", "message_digest", "signing_time", "signing_certificate_v2")


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


@dataclass(frozen=True)
class CadesReport:
    signer: str
    cert_serial: str
    signing_time: datetime | None
    intact: bool
    valid: bool
    trusted: bool


@dataclass
class PackageReport:
    problems: list[Problem] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    cades: CadesReport | None = None
    pdfs_checked: int = 0

    @property
    def valid(self) -> bool:
        return not self.problems

    def add(self, code: str, message: str) -> None:
        self.problems.append(Problem(code, message))


def check_package(
    path: Path, trust_roots: list[x509.Certificate], *, check_pdfs: bool = True
) -> PackageReport:
    """Every problem of the container at `path`; an empty list means it is valid."""
    report = PackageReport()
    try:
        with zipfile.ZipFile(path) as archive:
            _check_archive(archive, trust_roots, report, check_pdfs)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        report.add("not_a_zip", f"The package is not a readable ZIP file: {exc}.")
    return report


def _check_archive(
    archive: zipfile.ZipFile,
    roots: list[x509.Certificate],
    report: PackageReport,
    check_pdfs: bool,
) -> None:
    infos = archive.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        report.add("duplicate_entry", "The ZIP has several entries with the same name.")
        return
    _check_mimetype(archive, infos, report)
    missing = [
        n for n in (container.MANIFEST, container.SIGNATURE, container.INDEX) if n not in names
    ]
    if missing:
        report.add("missing_entry", f"The package lacks {', '.join(missing)}.")
        return
    manifest = archive.read(container.MANIFEST)
    digests = _check_manifest(archive, manifest, names, report)
    report.cades = _check_cades(manifest, archive.read(container.SIGNATURE), roots, report)
    records = _check_index(archive, names, digests, report)
    if check_pdfs and not report.problems:
        for record_id in records:
            _check_pdf(record_id, archive.read(f"records/{record_id}.pdf"), roots, report)
            report.pdfs_checked += 1


def _check_mimetype(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], report: PackageReport
) -> None:
    first = min(infos, key=lambda i: i.header_offset) if infos else None
    if first is None or first.filename != container.MIMETYPE_ENTRY or first.header_offset != 0:
        report.add("mimetype_not_first", "The first ZIP entry must be `mimetype`.")
        return
    if first.compress_type != zipfile.ZIP_STORED:
        report.add("mimetype_compressed", "The `mimetype` entry must be stored, not compressed.")
    if first.extra:
        report.add("mimetype_extra_field", "The `mimetype` entry must have no extra field.")
    value = archive.read(first).decode("ascii", "replace")
    if value != container.MIMETYPE:
        report.add("wrong_mimetype", f"`mimetype` is {value!r}, expected {container.MIMETYPE!r}.")


def _check_manifest(
    archive: zipfile.ZipFile, manifest: bytes, names: list[str], report: PackageReport
) -> dict[str, str]:
    """Each referenced object's digest checked; returns uri -> sha256 hex as referenced."""
    try:
        root = ElementTree.fromstring(manifest)
    except ElementTree.ParseError as exc:
        report.add("manifest_unreadable", f"{container.MANIFEST} is not well-formed XML: {exc}.")
        return {}
    if root.tag != f"{{{container.ASIC_NS}}}ASiCManifest":
        report.add("manifest_unreadable", f"{container.MANIFEST} is not an ASiCManifest.")
        return {}
    sig_ref = root.find(f"{{{container.ASIC_NS}}}SigReference")
    if sig_ref is None or sig_ref.get("URI") != container.SIGNATURE:
        report.add(
            "manifest_sig_reference", f"{container.MANIFEST} must reference {container.SIGNATURE}."
        )
    digests: dict[str, str] = {}
    for ref in root.iter(f"{{{container.ASIC_NS}}}DataObjectReference"):
        uri = ref.get("URI", "")
        expected = _referenced_digest(ref, uri, report)
        if expected is None:
            continue
        digests[uri] = expected
        if uri not in names:
            report.add("missing_entry", f"{uri} is in the manifest but not in the package.")
            continue
        actual = _entry_sha256(archive, uri)
        if actual != expected:
            report.add(
                "digest_mismatch",
                f"{uri}: SHA-256 is {actual}, the manifest says {expected}.",
            )
    for name in names:
        if (
            name != container.MIMETYPE_ENTRY
            and not name.startswith("META-INF/")
            and name not in digests
        ):
            report.add("unsigned_entry", f"{name} is in the package but not in the manifest.")
    return digests


def _referenced_digest(ref: ElementTree.Element, uri: str, report: PackageReport) -> str | None:
    method = ref.find(f"{{{container.DS_NS}}}DigestMethod")
    value = ref.find(f"{{{container.DS_NS}}}DigestValue")
    if method is None or method.get("Algorithm") != container.SHA256_URI or value is None:
        report.add("manifest_digest_method", f"{uri}: the manifest must give a SHA-256 digest.")
        return None
    try:
        return base64.b64decode(value.text or "", validate=True).hex()
    except ValueError:
        report.add("manifest_digest_method", f"{uri}: the digest value is not base64.")
        return None


def _entry_sha256(archive: zipfile.ZipFile, name: str) -> str:
    digest = hashlib.sha256()
    with archive.open(name) as handle:
        while chunk := handle.read(container.CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_cades(
    manifest: bytes, p7s: bytes, roots: list[x509.Certificate], report: PackageReport
) -> CadesReport | None:
    try:
        info = cms.ContentInfo.load(p7s)
        signed_data = info["content"]
        if info["content_type"].native != "signed_data":
            raise ValueError("not a SignedData")
        if signed_data["encap_content_info"]["content"].native is not None:
            raise ValueError("the signature is not detached")
        signer_info = signed_data["signer_infos"][0]
        present = {a["type"].native for a in signer_info["signed_attrs"]}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        report.add(
            "signature_unreadable", f"{container.SIGNATURE} is not a CAdES signature: {exc}."
        )
        return None
    absent = [a for a in _REQUIRED_ATTRS if a not in present]
    if absent:
        report.add("signature_attributes", f"{container.SIGNATURE} lacks {', '.join(absent)}.")
    try:
        status = asyncio.run(
            async_validate_detached_cms(
                manifest,
                signed_data,
                signer_validation_context=validation.validation_context(roots),
            )
        )
    except Exception as exc:  # pyHanko raises many types on malformed CMS
        report.add("signature_invalid", f"{container.SIGNATURE} cannot be validated: {exc}.")
        return None
    cert = status.signing_cert
    result = CadesReport(
        signer=str(cert.subject.native.get("common_name", "")),
        cert_serial=format(cert.serial_number, "x"),
        signing_time=status.signer_reported_dt,
        intact=status.intact,
        valid=status.valid,
        trusted=status.bottom_line,
    )
    if not status.intact:
        report.add(
            "signature_invalid",
            f"{container.SIGNATURE} does not match {container.MANIFEST}: the manifest was changed.",
        )
    elif not status.valid:
        report.add("signature_invalid", f"{container.SIGNATURE} has an invalid signature value.")
    elif not status.bottom_line:
        report.add(
            "signature_untrusted",
            f"{container.SIGNATURE} is signed by {result.signer} (serial {result.cert_serial}), "
            "whose certificate does not chain to a trusted root.",
        )
    return result


def _check_index(
    archive: zipfile.ZipFile, names: list[str], digests: dict[str, str], report: PackageReport
) -> list[str]:
    """The record ids of records.json, each matching its PDF; problems otherwise."""
    try:
        index = json.loads(archive.read(container.INDEX))
        entries = {str(r["record_id"]): str(r["sha256"]) for r in index["records"]}
        report.index = {k: index[k] for k in ("school_id", "academic_year", "submission_round")}
        report.index["records"] = len(entries)
    except (ValueError, KeyError, TypeError) as exc:
        report.add("index_unreadable", f"{container.INDEX} is not a valid index: {exc}.")
        return []
    pdfs = {n.removeprefix("records/").removesuffix(".pdf") for n in names if _is_pdf(n)}
    for record_id in sorted(set(entries) - pdfs):
        report.add("index_mismatch", f"{container.INDEX} lists {record_id}, which has no PDF.")
    for record_id in sorted(pdfs - set(entries)):
        report.add("index_mismatch", f"records/{record_id}.pdf is not listed in {container.INDEX}.")
    for record_id, sha256 in sorted(entries.items()):
        referenced = digests.get(f"records/{record_id}.pdf")
        if record_id in pdfs and referenced is not None and referenced != sha256:
            report.add(
                "index_mismatch",
                f"{container.INDEX} gives record {record_id} SHA-256 {sha256}; "
                f"the manifest says {referenced}.",
            )
    return sorted(set(entries) & pdfs)


def _is_pdf(name: str) -> bool:
    return name.startswith("records/") and name.endswith(".pdf")


def _check_pdf(
    record_id: str, pdf: bytes, roots: list[x509.Certificate], report: PackageReport
) -> None:
    entry = f"records/{record_id}.pdf"
    try:
        signatures = validation.validate_pdf(pdf, roots)
    except Exception as exc:  # a PDF hostile enough to break the validator is invalid
        report.add("pdf_invalid", f"{entry}: cannot be validated: {exc}.")
        return
    fields = [s.field_name for s in signatures]
    if fields != list(FIELD_NAMES):
        report.add(
            "pdf_signatures",
            f"{entry}: signatures {fields}, expected {list(FIELD_NAMES)} in that order.",
        )
        return
    if signatures[-1].coverage != "ENTIRE_FILE":
        report.add("pdf_signature_invalid", f"{entry}: bytes follow the seal's signature.")
    for sig in signatures:
        if not sig.bottom_line:
            report.add(
                "pdf_signature_invalid",
                f"{entry}: signature {sig.field_name} does not validate "
                f"(intact={sig.intact}, valid={sig.valid}, trusted={sig.trusted}, "
                f"changes after: {sig.modification_level}).",
            )
