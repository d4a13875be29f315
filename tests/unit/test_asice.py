"""The container format: deterministic bytes, ZIP layout, manifest, and what the checks catch."""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
from pathlib import Path

import pytest

from daemon.blobs import FsStore
from daemon.errors import StoreCorrupt
from daemon.packaging import check, container
from daemon.packaging.container import PackageContent, PackagedRecord

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
