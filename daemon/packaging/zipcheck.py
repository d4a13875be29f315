"""Every byte of a ZIP accounted for: local entries = central directory, safe names.

A ZIP can be read two ways: from its central directory (as `zipfile` and the package
check do) or by walking its local headers from offset 0 (as a streaming reader does).
An attacker can make the two disagree: a local entry the directory does not list, a
directory entry pointing into another entry's data, bytes hidden in a gap or after the
end record. So the file must be exactly: the local entries, back to back from offset
0, in the directory's order of offsets, each header saying what the directory says;
then the directory; then (Zip64 records and) the end record, with no comment.
"""

from __future__ import annotations

import struct
import zipfile
from typing import BinaryIO

from daemon.verification.verdict import Problem

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIG = b"PK\x03\x04"
_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sIQI")
_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_DESCRIPTOR_SIG = b"PK\x07\x08"
_FLAG_ENCRYPTED = 0x1
_FLAG_DESCRIPTOR = 0x8
_FLAG_UTF8 = 0x800
_ZIP64_MARK = 0xFFFFFFFF


def unsafe_name(name: str) -> str | None:
    """Why an entry name is unsafe to extract or to trust; None if it is safe."""
    if not name:
        return "an empty name"
    if any(ord(c) < 32 or ord(c) == 0x7F for c in name):
        return "a control character"
    if "\\" in name:
        return "a backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        return "a `.` or `..` or empty path segment"
    return None


def layout_problems(handle: BinaryIO, infos: list[zipfile.ZipInfo]) -> list[Problem]:
    """What in the file at `handle` is not exactly the entries of `infos` and their directory."""
    size = handle.seek(0, 2)
    end = _end_records(handle, size)
    if isinstance(end, Problem):
        return [end]
    cd_offset, cd_size, entries, cd_end = end
    problems: list[Problem] = []
    if entries != len(infos):
        problems.append(
            Problem(
                "zip_header_mismatch",
                f"The end record counts {entries} entries; the central directory has {len(infos)}.",
            )
        )
    if cd_offset + cd_size != cd_end:
        problems.append(
            Problem("zip_gap", "Bytes lie between the central directory and the end record.")
        )
    cursor = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < cursor:
            problems.append(
                Problem(
                    "zip_overlap",
                    f"{info.filename}: its data overlaps the entry before it (offset "
                    f"{info.header_offset}, the previous entry ends at {cursor}).",
                )
            )
            continue
        if info.header_offset > cursor:
            problems.append(_gap(handle, cursor, info.header_offset))
        entry_end, mismatch = _local_entry(handle, info)
        if mismatch is not None:
            problems.append(mismatch)
            return problems  # past a broken header, offsets mean nothing
        cursor = entry_end
    if cursor != cd_offset:
        problems.append(_misplaced_directory(handle, cursor, cd_offset))
    return problems


def _misplaced_directory(handle: BinaryIO, cursor: int, cd_offset: int) -> Problem:
    if cd_offset < cursor:
        return Problem("zip_overlap", "The central directory overlaps the last entry's data.")
    return _gap(handle, cursor, cd_offset)


def _gap(handle: BinaryIO, start: int, stop: int) -> Problem:
    handle.seek(start)
    if handle.read(4) == _LOCAL_SIG:
        return Problem(
            "zip_unlisted_entry",
            f"A local entry at offset {start} is not in the central directory: a reader "
            "walking the file would see an entry the check did not.",
        )
    return Problem("zip_gap", f"Bytes {start}-{stop} belong to no entry.")


def _local_entry(handle: BinaryIO, info: zipfile.ZipInfo) -> tuple[int, Problem | None]:
    """Where the entry's local record ends, or why its header disagrees with the directory."""
    handle.seek(info.header_offset)
    raw = handle.read(_LOCAL.size)
    if len(raw) < _LOCAL.size or raw[:4] != _LOCAL_SIG:
        return 0, _mismatch(info, "has no local header where the directory points")
    (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = _LOCAL.unpack(raw)
    name_bytes = handle.read(name_len)
    name = name_bytes.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", "replace")
    if name != info.filename:
        return 0, _mismatch(info, f"is named {name!r} in its local header")
    if flags & _FLAG_ENCRYPTED:
        return 0, _mismatch(info, "is encrypted")
    if method != info.compress_type:
        return 0, _mismatch(info, "has another compression method in its local header")
    descriptor = bool(flags & _FLAG_DESCRIPTOR)
    if not descriptor and (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
        if _ZIP64_MARK not in (csize, usize):
            return 0, _mismatch(info, "has other sizes or CRC in its local header")
    data_end = info.header_offset + _LOCAL.size + name_len + extra_len + info.compress_size
    return data_end + (_descriptor_size(handle, data_end, info) if descriptor else 0), None


def _descriptor_size(handle: BinaryIO, at: int, info: zipfile.ZipInfo) -> int:
    handle.seek(at)
    signed = handle.read(4) == _DESCRIPTOR_SIG
    zip64 = info.compress_size >= _ZIP64_MARK or info.file_size >= _ZIP64_MARK
    return (4 if signed else 0) + (20 if zip64 else 12)


def _mismatch(info: zipfile.ZipInfo, what: str) -> Problem:
    return Problem("zip_header_mismatch", f"{info.filename}: the entry {what}.")


def _end_records(handle: BinaryIO, size: int) -> tuple[int, int, int, int] | Problem:
    """(directory offset, directory size, entries, where the directory must end)."""
    trailing = Problem(
        "zip_trailing_data",
        "The file does not end with the ZIP end record (trailing bytes or a comment).",
    )
    if size < _EOCD.size:
        return trailing
    handle.seek(size - _EOCD.size)
    sig, disk, cd_disk, _, entries, cd_size, cd_offset, comment = _EOCD.unpack(
        handle.read(_EOCD.size)
    )
    if sig != _EOCD_SIG or comment != 0:
        return trailing
    if disk or cd_disk:
        return Problem("zip_header_mismatch", "The ZIP claims to span several disks.")
    if _ZIP64_MARK not in (cd_size, cd_offset) and entries != 0xFFFF:
        return cd_offset, cd_size, entries, size - _EOCD.size
    return _zip64_end(handle, size, trailing)


def _zip64_end(
    handle: BinaryIO, size: int, trailing: Problem
) -> tuple[int, int, int, int] | Problem:
    at = size - _EOCD.size - _LOCATOR.size
    if at < 0:
        return trailing
    handle.seek(at)
    sig, _, record_offset, _ = _LOCATOR.unpack(handle.read(_LOCATOR.size))
    if sig != _LOCATOR_SIG:
        return trailing
    handle.seek(record_offset)
    record = handle.read(_ZIP64_EOCD.size)
    if len(record) < _ZIP64_EOCD.size or record[:4] != _ZIP64_EOCD_SIG:
        return trailing
    _, record_size, _, _, _, _, _, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
    if record_offset + 12 + record_size != at:
        return Problem("zip_gap", "Bytes lie between the Zip64 end records.")
    return cd_offset, cd_size, entries, record_offset
