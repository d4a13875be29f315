"""Checks of an ASiC-E package, as the ministry makes them: structure, manifest, seal, PDFs.

Used by the ministry simulator and by `hocba-signer verify PACKAGE.asice`. Every
problem found is reported with a code and a message naming the entry at fault;
nothing here raises on hostile input. In order: every byte of the ZIP accounted for
(daemon.packaging.zipcheck), only the expected entries, the manifest's digests, the
seal (CAdES, by the package's own school's seal certificate), records.json (each
record once, matching its PDF), then each PDF by the verdict rule
(daemon.verification.verdict) for the package's school, and what the PDF says about
itself (daemon.verification.described). Blocks: run it in a thread or a process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from asn1crypto import x509

from daemon.errors import HocbaError, InvalidMessage
from daemon.packaging import container, seal_check, zipcheck
from daemon.packaging.seal_check import CadesReport
from daemon.pdf import validation
from daemon.record.attached import attached_record_xml
from daemon.record.xml import read_xml
from daemon.settings import VerificationSettings
from daemon.verification import described
from daemon.verification.evidence import SignatureEvidence, evidence_of
from daemon.verification.verdict import Problem, RecordVerdict, judge

__all__ = ["CadesReport", "PackageReport", "Problem", "check_package"]

_META_INF = (container.MANIFEST, container.SIGNATURE)


@dataclass
class PackageReport:
    problems: list[Problem] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    cades: CadesReport | None = None
    pdfs_checked: int = 0
    records: dict[str, RecordVerdict] = field(default_factory=dict)
    # Each record's signatures: their trusted timestamp and certificate status.
    evidence: dict[str, tuple[SignatureEvidence, ...]] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        """`issued` when every record in it is issued and the container is sound."""
        return "issued" if self.valid else "invalid"

    def add(self, code: str, message: str) -> None:
        self.problems.append(Problem(code, message))


def check_package(
    path: Path,
    trust_roots: list[x509.Certificate],
    *,
    check_pdfs: bool = True,
    rules: VerificationSettings | None = None,
) -> PackageReport:
    """Every problem of the container at `path`; an empty list means it is valid."""
    report = PackageReport()
    try:
        with path.open("rb") as handle, zipfile.ZipFile(handle) as archive:
            _check_archive(archive, handle, trust_roots, report, check_pdfs, rules)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        report.add("not_a_zip", f"The package is not a readable ZIP file: {exc}.")
    return report


def _check_archive(
    archive: zipfile.ZipFile,
    handle: Any,
    roots: list[x509.Certificate],
    report: PackageReport,
    check_pdfs: bool,
    rules: VerificationSettings | None,
) -> None:
    infos = archive.infolist()
    names = [i.filename for i in infos]
    if not _sound_container(handle, infos, report):
        return
    _check_mimetype(archive, infos, report)
    missing = [
        n for n in (container.MANIFEST, container.SIGNATURE, container.INDEX) if n not in names
    ]
    if missing:
        report.add("missing_entry", f"The package lacks {', '.join(missing)}.")
        return
    rules = rules or VerificationSettings()
    manifest = archive.read(container.MANIFEST)
    digests = _check_manifest(archive, manifest, names, report)
    report.cades = seal_check.check_seal(
        manifest, archive.read(container.SIGNATURE), roots, report.problems, rules
    )
    records = _check_index(archive, names, digests, report)
    report.problems += seal_check.school_problems(report.cades, report.index.get("school_id"))
    for name in names:
        xml_of = name.removeprefix("records/").removesuffix(".xml")
        beside = name.startswith("records/") and name.endswith(".xml")
        if beside and f"records/{xml_of}.pdf" not in names:
            report.add("unexpected_entry", f"{name} is beside no PDF.")
    if check_pdfs and not report.problems:
        for record_id, entry in records.items():
            pdf = archive.read(f"records/{record_id}.pdf")
            _check_pdf(record_id, entry, pdf, roots, report, rules)
            _check_record_xml(archive, record_id, pdf, set(names), report)
            report.pdfs_checked += 1


def _sound_container(handle: Any, infos: list[zipfile.ZipInfo], report: PackageReport) -> bool:
    """Unique safe names, every byte accounted for, only the entries a package has."""
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        report.add("duplicate_entry", "The ZIP has several entries with the same name.")
        return False
    for name in names:
        why = zipcheck.unsafe_name(name)
        if why is not None:
            report.add("zip_unsafe_name", f"Entry {name!r} has {why} in its name.")
    if report.problems:
        return False
    report.problems += zipcheck.layout_problems(handle, infos)
    if report.problems:
        return False
    for name in names:
        if name.startswith("META-INF/") and name not in _META_INF:
            report.add(
                "unexpected_meta_inf_entry",
                f"{name}: META-INF/ holds only {' and '.join(_META_INF)}.",
            )
        elif not name.startswith("META-INF/") and not _expected(name):
            report.add("unexpected_entry", f"{name} is not part of a package.")
    return True


def _expected(name: str) -> bool:
    if name in (container.MIMETYPE_ENTRY, container.INDEX):
        return True
    record_id = _record_of(name)
    if record_id is None and name.startswith("records/") and name.endswith(".xml"):
        record_id = name.removeprefix("records/").removesuffix(".xml")  # the data beside it
    return record_id is not None and "/" not in record_id and record_id != ""


def _check_record_xml(
    archive: zipfile.ZipFile, record_id: str, pdf: bytes, names: set[str], report: PackageReport
) -> None:
    """records/<id>.xml: there exactly when the PDF carries the data, and the same bytes."""
    entry = f"records/{record_id}.xml"
    try:
        embedded = attached_record_xml(pdf) if b"EmbeddedFile" in pdf else None
    except HocbaError as exc:
        report.add("record_xml_mismatch", f"records/{record_id}.pdf: its XML is unreadable: {exc}")
        return
    beside = archive.read(entry) if entry in names else None
    if embedded is None and beside is None:
        return
    if beside is None:
        report.add(
            "record_xml_missing", f"records/{record_id}.pdf carries its data; {entry} is missing."
        )
        return
    if beside != embedded:
        report.add("record_xml_mismatch", f"{entry} is not the XML its PDF carries.")
        return
    try:
        found, _ = read_xml(beside, entry)
    except InvalidMessage as exc:
        report.add("record_xml_invalid", str(exc))
        return
    if found != record_id:
        report.add("record_xml_mismatch", f"{entry} describes record {found}.")


def _record_of(name: str) -> str | None:
    if name.startswith("records/") and name.endswith(".pdf"):
        return name.removeprefix("records/").removesuffix(".pdf")
    return None


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
        if uri in digests:
            report.add("manifest_duplicate", f"{uri} is referenced twice in the manifest.")
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
    _check_unsigned(names, digests, report)
    return digests


def _check_unsigned(names: list[str], digests: dict[str, str], report: PackageReport) -> None:
    for name in names:
        if (
            name != container.MIMETYPE_ENTRY
            and not name.startswith("META-INF/")
            and name not in digests
        ):
            report.add("unsigned_entry", f"{name} is in the package but not in the manifest.")


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


@dataclass(frozen=True)
class _Listed:
    """A record as records.json lists it."""

    sha256: str
    student_id: str


def _check_index(
    archive: zipfile.ZipFile, names: list[str], digests: dict[str, str], report: PackageReport
) -> dict[str, _Listed]:
    """The records of records.json that have a PDF, each listed once; problems otherwise."""
    try:
        index = json.loads(archive.read(container.INDEX))
        listed = [
            (str(r["record_id"]), _Listed(str(r["sha256"]), str(r["student_id"])))
            for r in index["records"]
        ]
        report.index = {k: index[k] for k in ("school_id", "academic_year", "submission_round")}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        report.add("index_unreadable", f"{container.INDEX} is not a valid index: {exc}.")
        return {}
    entries: dict[str, _Listed] = {}
    for record_id, entry in listed:
        if record_id in entries:
            report.add(
                "duplicate_record", f"{container.INDEX} lists record {record_id} more than once."
            )
        entries.setdefault(record_id, entry)
    report.index["records"] = len(entries)
    _check_same_pdf_twice(entries, report)
    pdfs = {r for n in names if (r := _record_of(n)) is not None}
    for record_id in sorted(set(entries) - pdfs):
        report.add("index_mismatch", f"{container.INDEX} lists {record_id}, which has no PDF.")
    for record_id in sorted(pdfs - set(entries)):
        report.add("index_mismatch", f"records/{record_id}.pdf is not listed in {container.INDEX}.")
    for record_id, entry in sorted(entries.items()):
        referenced = digests.get(f"records/{record_id}.pdf")
        if record_id in pdfs and referenced is not None and referenced != entry.sha256:
            report.add(
                "index_mismatch",
                f"{container.INDEX} gives record {record_id} SHA-256 {entry.sha256}; "
                f"the manifest says {referenced}.",
            )
    return {r: entries[r] for r in sorted(set(entries) & pdfs)}


def _check_same_pdf_twice(entries: dict[str, _Listed], report: PackageReport) -> None:
    by_digest: dict[str, list[str]] = {}
    for record_id, entry in entries.items():
        by_digest.setdefault(entry.sha256, []).append(record_id)
    for ids in by_digest.values():
        if len(ids) > 1:
            report.add(
                "record_mismatch",
                f"Records {', '.join(sorted(ids))} are the same PDF: one record's PDF is "
                "presented under another record's id.",
            )


def _check_pdf(
    record_id: str,
    listed: _Listed,
    pdf: bytes,
    roots: list[x509.Certificate],
    report: PackageReport,
    rules: VerificationSettings,
) -> None:
    entry = f"records/{record_id}.pdf"
    try:
        signatures = validation.validate_pdf(pdf, roots)
        report.evidence[record_id] = evidence_of(pdf, roots)
    except Exception as exc:  # a PDF hostile enough to break the validator is invalid
        report.add("pdf_invalid", f"{entry}: cannot be validated: {exc}.")
        return
    school = report.index["school_id"]
    verdict = judge(signatures, rules, school_id=school)
    report.records[record_id] = verdict
    for problem in verdict.problems:
        report.add(problem.code, f"{entry}: {problem.message}")
    _check_description(entry, record_id, listed, pdf, report)


def _check_description(
    entry: str, record_id: str, listed: _Listed, pdf: bytes, report: PackageReport
) -> None:
    """What the PDF says about itself agrees with where and how it is listed."""
    said = described.describe_pdf(pdf)
    if said is None:
        return  # not self-described: its signatures are all that can be judged
    expected = {
        "record_id": ("record_mismatch", record_id),
        "student_id": ("student_mismatch", listed.student_id),
        "school_id": ("wrong_school", report.index["school_id"]),
        "academic_year": ("record_mismatch", report.index["academic_year"]),
    }
    for attr, (code, value) in expected.items():
        found = getattr(said, attr)
        if found is not None and found != str(value):
            report.add(
                code,
                f"{entry}: the PDF says its {attr} is {found}; {container.INDEX} says {value}.",
            )
