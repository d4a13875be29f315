"""Records and packages made with the real SoftHSM keys, genuine or forged as an attacker would.

A forger here holds real keys of the wrong person (another teacher, another school's
seal), or writes the container by hand; every file is signed for real.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF

from daemon.hsm import KeyRef, SigningPool, SignJob
from daemon.packaging import container
from daemon.stages import ORDER
from daemon.verification import described
from tests.hsm_fixtures import FONT, DevHsm

SEALED_AT = datetime(2026, 6, 20, 9, 0, tzinfo=UTC)
YEAR = "2025-2026"


def record_pdf(record_id: str, student_id: str, school_id: str) -> bytes:
    """A record as a school system writes it, describing itself in its XMP."""
    pdf = FPDF()
    pdf.add_page()
    pdf.add_font("DejaVu", fname=str(FONT))
    pdf.set_font("DejaVu", size=14)
    pdf.cell(text=f"Học bạ số {record_id} — học sinh {student_id}")
    pdf.set_xmp_metadata(
        described.xmp(described.RecordDescription(record_id, student_id, school_id, YEAR))
    )
    return bytes(pdf.output())


@dataclass
class Forge:
    """Signs with any key of the test token, as its holder could."""

    dev: DevHsm
    pool: SigningPool

    def key(self, school_id: str, signer_id: str) -> KeyRef:
        return self.dev.key(school_id, signer_id)

    def right_keys(self, school_id: str) -> list[KeyRef]:
        return [self.dev.stage_key(school_id, stage) for stage in ORDER]

    async def sign(self, pdf: bytes, keys: list[KeyRef]) -> bytes:
        """`pdf` signed field after field (GVCN, HieuTruong, DauTruong) by `keys`."""
        for stage, key in zip(ORDER, keys, strict=False):
            pdf = (await self.pool.sign(SignJob(pdf, stage, key))).pdf
        return pdf

    async def issued(self, record_id: str, student_id: str, school_id: str) -> bytes:
        pdf = record_pdf(record_id, student_id, school_id)
        return await self.sign(pdf, self.right_keys(school_id))

    async def seal(self, school_id: str, manifest: bytes) -> bytes:
        return await self.pool.sign_cms(self.key(school_id, "SEAL"), manifest, SEALED_AT)


@dataclass(frozen=True)
class Listed:
    record_id: str
    student_id: str
    pdf: bytes


def index_bytes(school_id: str, records: list[Listed]) -> bytes:
    """records.json as the packager writes it, but with whatever records it is given."""
    index = {
        "type": container.INDEX_TYPE,
        "school_id": school_id,
        "academic_year": YEAR,
        "submission_round": 1,
        "records": [
            {
                "record_id": r.record_id,
                "student_id": r.student_id,
                "grade": 5,
                "class": "5A",
                "sha256": hashlib.sha256(r.pdf).hexdigest(),
            }
            for r in records
        ],
    }
    return (json.dumps(index, sort_keys=True, separators=(",", ":")) + "\n").encode()


async def package(
    forge: Forge,
    path: Path,
    school_id: str,
    records: list[Listed],
    *,
    sealed_by: str | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """A container laid out as daemon.packaging.container lays it out, sealed for real.

    `extra` entries are written after the PDFs and listed in the manifest (so the seal
    covers them), except those under META-INF/, which a manifest never lists.
    """
    index = index_bytes(school_id, records)
    pdfs = {f"records/{r.record_id}.pdf": r.pdf for r in records}
    signed_extra = {n: d for n, d in (extra or {}).items() if not n.startswith("META-INF/")}
    objects = [(container.INDEX, container.JSON_MIME, hashlib.sha256(index).digest())]
    objects += [
        (name, container.PDF_MIME, hashlib.sha256(data).digest())
        for name, data in {**pdfs, **signed_extra}.items()
    ]
    manifest = container.manifest_xml(objects)
    seal = await forge.seal(sealed_by or school_id, manifest)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(container.zip_info(container.MIMETYPE_ENTRY), container.MIMETYPE)
        archive.writestr(container.zip_info(container.MANIFEST), manifest)
        archive.writestr(container.zip_info(container.SIGNATURE), seal)
        archive.writestr(container.zip_info(container.INDEX), index)
        for name, data in {**pdfs, **(extra or {})}.items():
            archive.writestr(container.zip_info(name), data)
    return path


def drop_from_central_directory(path: Path, name: str) -> None:
    """Remove `name`'s central directory record, keeping its local entry in the file."""
    data = bytearray(path.read_bytes())
    eocd = len(data) - 22
    entries, _, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    cursor, kept = cd_offset, bytearray()
    for _ in range(entries):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, cursor + 28)
        record_len = 46 + name_len + extra_len + comment_len
        record = data[cursor : cursor + record_len]
        if bytes(record[46 : 46 + name_len]).decode() != name:
            kept += record
        cursor += record_len
    end = bytearray(data[eocd:])
    struct.pack_into("<HHI", end, 8, entries - 1, entries - 1, len(kept))
    path.write_bytes(bytes(data[:cd_offset]) + bytes(kept) + bytes(end))
