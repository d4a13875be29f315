"""ASiC-E containers (ETSI EN 319 162-1) of issued records: deterministic, streamed to a file.

Entries, in this order: `mimetype` (first, stored), `META-INF/ASiCManifest.xml`,
`META-INF/signature001.p7s`, `records.json`, then `records/<record_id>.pdf` sorted by
record id. Every entry is STORED (the PDFs compress their streams already, and stored
bytes do not depend on the zlib version), dated 1980-01-01 00:00, with Unix mode 0644
and no extra fields. So the same records and the same CAdES signature give the same
bytes; the signature itself is deterministic for a fixed signing time (RSA PKCS#1
v1.5), which is why a package's signing time is stored with it and reused on rebuild.

The manifest is computed before any PDF is written (the store is content-addressed,
so every PDF's digest is known), and PDFs are copied one by one in chunks, hashed on
the way: a school of 2,000 records never sits in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from daemon.errors import StoreUnavailable

MIMETYPE = "application/vnd.etsi.asic-e+zip"
ASIC_NS = "http://uri.etsi.org/02918/v1.2.1#"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SHA256_URI = "http://www.w3.org/2001/04/xmlenc#sha256"
MIMETYPE_ENTRY = "mimetype"
MANIFEST = "META-INF/ASiCManifest.xml"
SIGNATURE = "META-INF/signature001.p7s"
INDEX = "records.json"
INDEX_TYPE = "hocba.package_index.v1"
PDF_MIME = "application/pdf"
JSON_MIME = "application/json"
CMS_MIME = "application/pkcs7-signature"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class PackagedRecord:
    record_id: str
    student_id: str
    grade: int
    class_name: str
    sha256: str

    @property
    def entry(self) -> str:
        return f"records/{self.record_id}.pdf"


@dataclass(frozen=True)
class PackageContent:
    """What a package says: whose records, for which round, and which versions."""

    school_id: str
    academic_year: str
    submission_round: int
    records: tuple[PackagedRecord, ...]

    def sorted_records(self) -> list[PackagedRecord]:
        return sorted(self.records, key=lambda r: r.record_id)

    def index_bytes(self) -> bytes:
        """records.json: canonical JSON (sorted keys, no spaces), records by id."""
        index = {
            "type": INDEX_TYPE,
            "school_id": self.school_id,
            "academic_year": self.academic_year,
            "submission_round": self.submission_round,
            "records": [
                {
                    "record_id": r.record_id,
                    "student_id": r.student_id,
                    "grade": r.grade,
                    "class": r.class_name,
                    "sha256": r.sha256,
                }
                for r in self.sorted_records()
            ],
        }
        text = json.dumps(index, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")

    def manifest_bytes(self) -> bytes:
        """META-INF/ASiCManifest.xml with the SHA-256 of records.json and every PDF."""
        objects = [(INDEX, JSON_MIME, hashlib.sha256(self.index_bytes()).digest())]
        objects += [(r.entry, PDF_MIME, bytes.fromhex(r.sha256)) for r in self.sorted_records()]
        return manifest_xml(objects)


def manifest_xml(objects: list[tuple[str, str, bytes]]) -> bytes:
    """An ASiCManifest referencing the signature and each (uri, mime type, sha256) object."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
        f'<asic:ASiCManifest xmlns:asic="{ASIC_NS}" xmlns:ds="{DS_NS}">',
        f'  <asic:SigReference URI="{SIGNATURE}" MimeType="{CMS_MIME}"/>',
    ]
    for uri, mime, digest in objects:
        lines += [
            f"  <asic:DataObjectReference URI={quoteattr(uri)} MimeType={quoteattr(mime)}>",
            f'    <ds:DigestMethod Algorithm="{SHA256_URI}"/>',
            f"    <ds:DigestValue>{base64.b64encode(digest).decode('ascii')}</ds:DigestValue>",
            "  </asic:DataObjectReference>",
        ]
    lines.append("</asic:ASiCManifest>")
    return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass(frozen=True)
class ContainerFile:
    path: Path
    sha256: str
    size_bytes: int


def write_container(
    target: Path,
    content: PackageContent,
    signature: bytes,
    source: Callable[[str], Path],
) -> ContainerFile:
    """Write the container atomically at `target`; `source(sha256)` is where each PDF lies.

    Blocks (file I/O): call it from a thread.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".asice")
        os.close(fd)
        try:
            _write_zip(Path(tmp), content, signature, source)
            _fsync(Path(tmp))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        sha256, size = file_digest(target)
    except OSError as exc:
        raise StoreUnavailable(f"Cannot write package {target.name}: {exc.strerror}.") from exc
    return ContainerFile(target, sha256, size)


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def zip_info(name: str) -> zipfile.ZipInfo:
    """A ZipInfo with nothing that varies between runs or machines."""
    info = zipfile.ZipInfo(name, ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # Unix, whatever the host
    info.external_attr = 0o100644 << 16
    return info


def _write_zip(
    path: Path, content: PackageContent, signature: bytes, source: Callable[[str], Path]
) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(zip_info(MIMETYPE_ENTRY), MIMETYPE.encode("ascii"))
        archive.writestr(zip_info(MANIFEST), content.manifest_bytes())
        archive.writestr(zip_info(SIGNATURE), signature)
        archive.writestr(zip_info(INDEX), content.index_bytes())
        for record in content.sorted_records():
            _copy_pdf(archive, record, source(record.sha256))


def _copy_pdf(archive: zipfile.ZipFile, record: PackagedRecord, pdf: Path) -> None:
    digest = hashlib.sha256()
    if not pdf.is_file():
        raise StoreUnavailable(
            f"Stored version {record.sha256[:12]}… of record {record.record_id} is missing."
        )
    with pdf.open("rb") as src, archive.open(zip_info(record.entry), "w") as dst:
        while chunk := src.read(CHUNK_BYTES):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != record.sha256:
        raise StoreUnavailable(
            f"Stored version {record.sha256[:12]}… of record {record.record_id} is corrupt."
        )


def _fsync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())
