"""The container format: deterministic bytes, ZIP layout, manifest, and what the checks catch."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from daemon.packaging import check, container
from daemon.packaging.container import PackageContent, PackagedRecord

FAKE_SIGNATURE = b"0\x80not-a-real-cms"


def _content(tmp_path: Path, n: int = 3) -> tuple[PackageContent, dict[str, Path]]:
    files: dict[str, Path] = {}
    records = []
    for i in range(n):
        data = b"%PDF-1.7\n" + bytes([i]) * (3 * container.CHUNK_BYTES // 2)
        digest = hashlib.sha256(data).hexdigest()
        path = tmp_path / digest
        path.write_bytes(data)
        files[digest] = path
        records.append(PackagedRecord(f"2025-2026-5A-{n - i:04d}", f"S{i}", 5, "5A", digest))
    return PackageContent("31000101", "2025-2026", 1, tuple(records)), files


def test_the_same_content_gives_the_same_bytes(tmp_path: Path) -> None:
    content, files = _content(tmp_path)
    one = container.write_container(
        tmp_path / "a.asice", content, FAKE_SIGNATURE, files.__getitem__
    )
    two = container.write_container(
        tmp_path / "b.asice", content, FAKE_SIGNATURE, files.__getitem__
    )
    assert one.sha256 == two.sha256
    assert (tmp_path / "a.asice").read_bytes() == (tmp_path / "b.asice").read_bytes()


def test_mimetype_is_first_and_stored_and_entries_are_sorted(tmp_path: Path) -> None:
    content, files = _content(tmp_path)
    written = container.write_container(
        tmp_path / "p.asice", content, FAKE_SIGNATURE, files.__getitem__
    )
    raw = written.path.read_bytes()
    # The ETSI "magic": mimetype's local header at offset 0, its value at offset 38.
    assert raw[30:38] == b"mimetype"
    assert raw[38 : 38 + len(container.MIMETYPE)] == container.MIMETYPE.encode()
    with zipfile.ZipFile(written.path) as archive:
        infos = archive.infolist()
    assert infos[0].filename == "mimetype" and infos[0].compress_type == zipfile.ZIP_STORED
    names = [i.filename for i in infos]
    assert names[1:] == sorted(names[1:])
    assert all(i.extra == b"" and i.date_time == container.ZIP_EPOCH for i in infos)


def test_the_manifest_lists_the_digest_of_every_data_object(tmp_path: Path) -> None:
    content, files = _content(tmp_path)
    written = container.write_container(
        tmp_path / "p.asice", content, FAKE_SIGNATURE, files.__getitem__
    )
    report = check.PackageReport()
    with zipfile.ZipFile(written.path) as archive:
        digests = check._check_manifest(
            archive, archive.read(container.MANIFEST), archive.namelist(), report
        )
    assert report.problems == []
    assert set(digests) == {container.INDEX, *(r.entry for r in content.records)}


def test_a_changed_pdf_in_the_store_stops_the_build(tmp_path: Path) -> None:
    content, files = _content(tmp_path, 1)
    (victim,) = files.values()
    victim.write_bytes(victim.read_bytes() + b"x")
    try:
        container.write_container(tmp_path / "p.asice", content, FAKE_SIGNATURE, files.__getitem__)
    except Exception as exc:
        assert "corrupt" in str(exc)
    else:
        raise AssertionError("a corrupt stored PDF was packaged")
    assert not (tmp_path / "p.asice").exists()
    assert list(tmp_path.glob(".tmp-*")) == []


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
