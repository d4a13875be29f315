"""ASiC-E containers (ETSI EN 319 162-1) of issued records: deterministic, streamed.

Entries, in this order: `mimetype` (first, stored), `META-INF/ASiCManifest.xml`,
`META-INF/signature001.p7s`, `records.json`, then `records/<record_id>.pdf` sorted by
record id, each followed by `records/<record_id>.xml` when its PDF carries the record's
data (hocba-record.xml, daemon/record/attached.py): the same bytes, beside the PDF, so
the ministry reads the fields without opening the PDF. Every entry is STORED (the PDFs
compress their streams already, and stored bytes do not depend on the zlib version),
dated 1980-01-01 00:00, with Unix mode 0644 and no extra fields. So the same records
and the same CAdES signature give the same bytes; the signature itself is deterministic
for a fixed signing time (RSA PKCS#1 v1.5), which is why a package's signing time is
stored with it and reused on rebuild.

The manifest is computed before the container is written (blobs are content-addressed,
so every PDF's digest is known; `with_record_xml` reads each PDF once, one at a time,
for its XML's digest). `container_chunks` reads the PDFs one at a time through
the blob reader and hands the container out in chunks, entry by entry, as it is
written: a school of 2,000 records never sits in memory, and no local file is needed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import zipfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from pathlib import Path
from xml.sax.saxutils import quoteattr

from daemon.blobs import BlobReader
from daemon.errors import StoreCorrupt
from daemon.record.attached import attached_record_xml

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
XML_MIME = "application/xml"
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
    xml_sha256: str | None = None  # of the hocba-record.xml its PDF carries, if any

    @property
    def entry(self) -> str:
        return f"records/{self.record_id}.pdf"

    @property
    def xml_entry(self) -> str:
        return f"records/{self.record_id}.xml"


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
            "records": [_index_entry(r) for r in self.sorted_records()],
        }
        text = json.dumps(index, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")

    def manifest_bytes(self) -> bytes:
        """META-INF/ASiCManifest.xml with the SHA-256 of records.json and every PDF."""
        objects = [(INDEX, JSON_MIME, hashlib.sha256(self.index_bytes()).digest())]
        for r in self.sorted_records():
            objects.append((r.entry, PDF_MIME, bytes.fromhex(r.sha256)))
            if r.xml_sha256 is not None:
                objects.append((r.xml_entry, XML_MIME, bytes.fromhex(r.xml_sha256)))
        return manifest_xml(objects)


def _index_entry(r: PackagedRecord) -> dict[str, object]:
    entry: dict[str, object] = {
        "record_id": r.record_id,
        "student_id": r.student_id,
        "grade": r.grade,
        "class": r.class_name,
        "sha256": r.sha256,
    }
    if r.xml_sha256 is not None:
        entry["xml_sha256"] = r.xml_sha256
    return entry


def _record_xml(pdf: bytes) -> bytes | None:
    # Embedded-file streams are never in object streams: a PDF without one costs no parse.
    return attached_record_xml(pdf) if b"EmbeddedFile" in pdf else None


async def with_record_xml(content: PackageContent, pdfs: BlobReader) -> PackageContent:
    """`content` with each record's XML digest, for those whose PDF carries the data."""
    records = []
    for record in content.records:
        xml = await asyncio.to_thread(_record_xml, await pdfs.get(record.sha256))
        digest = hashlib.sha256(xml).hexdigest() if xml is not None else None
        records.append(replace(record, xml_sha256=digest))
    return replace(content, records=tuple(records))


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


async def container_chunks(
    content: PackageContent, signature: bytes, pdfs: BlobReader
) -> AsyncGenerator[bytes, None]:
    """The container's bytes, in order, one chunk per entry; each PDF read from `pdfs`."""
    spool = _Spool()
    archive = zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED)
    archive.writestr(zip_info(MIMETYPE_ENTRY), MIMETYPE.encode("ascii"))
    archive.writestr(zip_info(MANIFEST), content.manifest_bytes())
    archive.writestr(zip_info(SIGNATURE), signature)
    archive.writestr(zip_info(INDEX), content.index_bytes())
    yield spool.take()
    for record in content.sorted_records():
        pdf = await pdfs.get(record.sha256)
        if hashlib.sha256(pdf).hexdigest() != record.sha256:
            # The manifest promises this digest; the reader should have refused already.
            raise StoreCorrupt(
                f"Stored version {record.sha256[:12]}… of record {record.record_id} is corrupt."
            )
        await asyncio.to_thread(archive.writestr, zip_info(record.entry), pdf)
        yield spool.take()
        if record.xml_sha256 is not None:
            xml = await asyncio.to_thread(_record_xml, pdf)
            if xml is None or hashlib.sha256(xml).hexdigest() != record.xml_sha256:
                raise StoreCorrupt(f"Record {record.record_id}'s XML is not the one listed.")
            archive.writestr(zip_info(record.xml_entry), xml)
            yield spool.take()
    archive.close()
    yield spool.take()


class _Spool:
    """A write-only file for zipfile that hands its bytes out between entries.

    zipfile goes back to rewrite an entry's local header (sizes, CRC) once the entry
    is written, so it needs a seekable file; only the current entry is ever rewritten,
    so everything before it can be handed out.
    """

    def __init__(self) -> None:
        self._held = bytearray()
        self._base = 0
        self._pos = 0

    def write(self, data: bytes, /) -> int:
        offset = self._pos - self._base
        self._held[offset : offset + len(data)] = data
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or pos < self._base:
            raise io.UnsupportedOperation("Those bytes were handed out already.")
        self._pos = pos
        return pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        """What was written since the last call; call between entries only."""
        assert self._pos == self._base + len(self._held), "an entry is still being written"
        data = bytes(self._held)
        self._base += len(data)
        self._held.clear()
        return data


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
