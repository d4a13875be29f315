"""The container format: deterministic bytes, ZIP layout, manifest, and what the checks catch."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import zipfile
from pathlib import Path

import pytest

from daemon.blobs import FsStore
from daemon.errors import StoreCorrupt
from daemon.packaging import check, container
from daemon.packaging.container import PackageContent, PackagedRecord
from daemon.record.render import render_record
from daemon.record.xml import canonical_xml
from producers.school_system import sample_record, sample_record_data

FAKE_SIGNATURE = b"0\x80not-a-real-cms"
# What the file-based writer (before packages were blobs) wrote for `_content(3)`: the
# streamed writer must give the very same bytes.
FILE_WRITER_SHA256 = "660f7d3914ae4c62bd527086e5df3d566854f8d7495a80fea84aa32b71150544"


async def _content(store: FsStore, n: int = 3) -> PackageContent:
    records = []
    for i in range(n):
        data = b"%PDF-1.7\n" + bytes([i]) * (3 * container.CHUNK_BYTES // 2)
        digest = await store.put(data)
        records.append(PackagedRecord(f"2025-2026-5A-{n - i:04d}", f"S{i}", 5, "5A", digest))
    return PackageContent("31000101", "2025-2026", 1, tuple(records))


async def _write(store: FsStore, content: PackageContent, path: Path) -> Path:
    chunks = container.container_chunks(content, FAKE_SIGNATURE, store)
    async with contextlib.aclosing(chunks) as stream:
        path.write_bytes(b"".join([chunk async for chunk in stream]))
    return path


async def test_the_same_content_gives_the_same_bytes(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "blobs")
    content = await _content(store)
    one = (await _write(store, content, tmp_path / "a.asice")).read_bytes()
    two = (await _write(store, content, tmp_path / "b.asice")).read_bytes()
    assert one == two
    assert hashlib.sha256(one).hexdigest() == FILE_WRITER_SHA256
    stored = await store.put_stream(container.container_chunks(content, FAKE_SIGNATURE, store))
    assert (stored.sha256, stored.size_bytes) == (FILE_WRITER_SHA256, len(one))


async def test_mimetype_is_first_and_stored_and_entries_are_sorted(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "blobs")
    path = await _write(store, await _content(store), tmp_path / "p.asice")
    raw = path.read_bytes()
    # The ETSI "magic": mimetype's local header at offset 0, its value at offset 38.
    assert raw[30:38] == b"mimetype"
    assert raw[38 : 38 + len(container.MIMETYPE)] == container.MIMETYPE.encode()
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert infos[0].filename == "mimetype" and infos[0].compress_type == zipfile.ZIP_STORED
    names = [i.filename for i in infos]
    assert names[1:] == sorted(names[1:])
    assert all(i.extra == b"" and i.date_time == container.ZIP_EPOCH for i in infos)
    assert all(i.flag_bits & 0x08 == 0 for i in infos)  # sizes in the headers, no descriptors


async def test_the_manifest_lists_the_digest_of_every_data_object(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "blobs")
    content = await _content(store)
    path = await _write(store, content, tmp_path / "p.asice")
    report = check.PackageReport()
    with zipfile.ZipFile(path) as archive:
        digests = check._check_manifest(
            archive, archive.read(container.MANIFEST), archive.namelist(), report
        )
        assert all(
            hashlib.sha256(archive.read(r.entry)).hexdigest() == r.sha256 for r in content.records
        )
    assert report.problems == []
    assert set(digests) == {container.INDEX, *(r.entry for r in content.records)}


async def test_a_changed_pdf_in_the_store_stops_the_build(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "blobs")
    content = await _content(store, 1)
    (record,) = content.records
    victim = store.path(record.sha256)
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(StoreCorrupt, match="corrupt"):
        await store.put_stream(container.container_chunks(content, FAKE_SIGNATURE, store))
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [record.sha256]


def test_a_zip_without_mimetype_first_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.asice"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("records.json", "{}")
        archive.writestr("mimetype", container.MIMETYPE)
    report = check.check_package(path, [])
    codes = [p.code for p in report.problems]
    assert codes[:2] == ["mimetype_not_first", "missing_entry"]


def test_garbage_is_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "bad.asice"
    path.write_bytes(b"PK\x03\x04 but nothing else")
    assert [p.code for p in check.check_package(path, []).problems] == ["not_a_zip"]


# Records that carry their data


async def _rendered_content(store: FsStore) -> tuple[PackageContent, dict[str, bytes]]:
    rng = random.Random("asice")
    records, xmls = [], {}
    for n in range(2):
        info = sample_record(rng, "31000101", "asice", n)
        data = sample_record_data(rng, info, "31000101")
        digest = await store.put(render_record(info.record_id, data))
        xmls[info.record_id] = canonical_xml(info.record_id, data)
        records.append(PackagedRecord(info.record_id, info.student_id, 5, "5A", digest))
    content = PackageContent("31000101", "2025-2026", 1, tuple(records))
    return await container.with_record_xml(content, store), xmls


async def test_a_record_s_xml_travels_beside_its_pdf_listed_in_the_manifest(
    tmp_path: Path,
) -> None:
    store = FsStore(tmp_path / "blobs")
    content, xmls = await _rendered_content(store)
    path = await _write(store, content, tmp_path / "p.asice")
    report = check.PackageReport()
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        digests = check._check_manifest(archive, archive.read(container.MANIFEST), names, report)
        index = json.loads(archive.read(container.INDEX))
        beside = {r: archive.read(f"records/{r}.xml") for r in xmls}
    assert report.problems == []
    assert beside == xmls
    for record_id, xml in xmls.items():
        assert digests[f"records/{record_id}.xml"] == hashlib.sha256(xml).hexdigest()
        pdf_at = names.index(f"records/{record_id}.pdf")
        assert names.index(f"records/{record_id}.xml") == pdf_at + 1
    assert [r["xml_sha256"] for r in index["records"]] == [
        hashlib.sha256(xmls[r]).hexdigest() for r in sorted(xmls)
    ]
    again = await _write(store, await container.with_record_xml(content, store), tmp_path / "q")
    assert again.read_bytes() == path.read_bytes()


def _check_xml(pdf: bytes, beside: bytes | None, record_id: str) -> list[str]:
    report = check.PackageReport()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if beside is not None:
            archive.writestr(f"records/{record_id}.xml", beside)
    with zipfile.ZipFile(buffer) as archive:
        check._check_record_xml(archive, record_id, pdf, set(archive.namelist()), report)
    return [p.code for p in report.problems]


async def test_the_check_refuses_xml_other_than_the_pdf_s_copy(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "blobs")
    content, xmls = await _rendered_content(store)
    record_id, xml = next(iter(xmls.items()))
    record = next(r for r in content.records if r.record_id == record_id)
    pdf = await store.get(record.sha256)
    assert _check_xml(pdf, xml, record_id) == []
    changed = xml.replace(b"</teacher_comment>", " Sửa.</teacher_comment>".encode())
    assert changed != xml
    assert _check_xml(pdf, changed, record_id) == ["record_xml_mismatch"]
    assert _check_xml(pdf, None, record_id) == ["record_xml_missing"]
    assert _check_xml(b"%PDF-1.7 no data", xml, record_id) == ["record_xml_mismatch"]


def test_a_pdf_without_data_needs_no_xml_beside_it() -> None:
    assert _check_xml(b"%PDF-1.7 no data", None, "R1") == []
