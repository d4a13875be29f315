"""Every byte of a package's ZIP accounted for, and only safe names: what the walk catches."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from daemon.packaging import check, container, zipcheck


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(container.zip_info(name), data)
    return out.getvalue()


def _problems(raw: bytes) -> list[str]:
    handle = io.BytesIO(raw)
    with zipfile.ZipFile(handle) as archive:
        return [p.code for p in zipcheck.layout_problems(handle, archive.infolist())]


ENTRIES = {"mimetype": container.MIMETYPE.encode(), "a.txt": b"a" * 100, "b.txt": b"b" * 50}


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [
        ("records/2025-2026-5A-01.pdf", False),
        ("META-INF/ASiCManifest.xml", False),
        ("records/../evil.pdf", True),
        ("../evil.pdf", True),
        ("/etc/passwd", True),
        ("C:evil.pdf", True),
        ("records\\evil.pdf", True),
        ("records//evil.pdf", True),
        ("records/./evil.pdf", True),
        ("records/evil\x00.pdf", True),
        ("records/evil\n.pdf", True),
        ("", True),
    ],
)
def test_entry_names(name: str, unsafe: bool) -> None:
    assert (zipcheck.unsafe_name(name) is not None) is unsafe


def test_a_zip_as_written_is_accounted_for_byte_by_byte() -> None:
    assert _problems(_zip(ENTRIES)) == []


def test_bytes_after_the_end_record_are_trailing_data() -> None:
    assert _problems(_zip(ENTRIES) + b"hidden") == ["zip_trailing_data"]


def test_a_comment_is_trailing_data() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(container.zip_info("a.txt"), b"a")
        archive.comment = b"look elsewhere"
    assert _problems(out.getvalue()) == ["zip_trailing_data"]


def test_bytes_between_entries_are_a_gap() -> None:
    raw = _zip(ENTRIES)
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        b_offset = archive.getinfo("b.txt").header_offset
    # Shift b.txt and the directory by 7 bytes of filler; fix the offsets that point past it.
    filler = b"\x00" * 7
    shifted = bytearray(raw[:b_offset] + filler + raw[b_offset:])
    eocd = len(shifted) - 22
    cd_offset = struct.unpack_from("<I", shifted, eocd + 16)[0]
    struct.pack_into("<I", shifted, eocd + 16, cd_offset + len(filler))
    cursor = cd_offset + len(filler)
    while shifted[cursor : cursor + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", shifted, cursor + 28)
        offset = struct.unpack_from("<I", shifted, cursor + 42)[0]
        if offset >= b_offset:
            struct.pack_into("<I", shifted, cursor + 42, offset + len(filler))
        cursor += 46 + name_len + extra_len + comment_len
    assert _problems(bytes(shifted)) == ["zip_gap"]


def test_a_directory_entry_pointing_into_another_entry_is_an_overlap() -> None:
    raw = bytearray(_zip(ENTRIES))
    eocd = len(raw) - 22
    cursor = struct.unpack_from("<I", raw, eocd + 16)[0]
    names = []
    while raw[cursor : cursor + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, cursor + 28)
        names.append((cursor, bytes(raw[cursor + 46 : cursor + 46 + name_len])))
        cursor += 46 + name_len + extra_len + comment_len
    # b.txt's directory record now points at a.txt's local header.
    a_offset = struct.unpack_from("<I", raw, names[1][0] + 42)[0]
    struct.pack_into("<I", raw, names[2][0] + 42, a_offset)
    # And b.txt's own local entry is now one the directory does not list.
    assert _problems(bytes(raw)) == ["zip_overlap", "zip_unlisted_entry"]


def test_a_local_header_naming_another_entry_is_a_mismatch() -> None:
    raw = _zip(ENTRIES).replace(b"b.txt", b"c.txt", 1)  # the local header only
    assert _problems(raw) == ["zip_header_mismatch"]


def test_the_package_check_stops_at_an_unsafe_name(tmp_path: Path) -> None:
    path = tmp_path / "p.asice"
    path.write_bytes(_zip({"mimetype": container.MIMETYPE.encode(), "../x": b"x"}))
    assert [p.code for p in check.check_package(path, []).problems] == ["zip_unsafe_name"]


def test_the_package_check_refuses_unexpected_entries(tmp_path: Path) -> None:
    path = tmp_path / "p.asice"
    path.write_bytes(
        _zip(
            {
                "mimetype": container.MIMETYPE.encode(),
                "META-INF/manifest.xml": b"<x/>",
                "notes.txt": b"x",
            }
        )
    )
    codes = [p.code for p in check.check_package(path, []).problems]
    assert codes[:2] == ["unexpected_meta_inf_entry", "unexpected_entry"]
