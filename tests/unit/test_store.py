"""The `fs` blob backend: content-addressed, durable, and never serving a corrupt object."""

import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.blobs import FsStore, Hashed
from daemon.errors import StoreCorrupt, StoreUnavailable


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read(store: FsStore, digest: str) -> list[bytes]:
    async with contextlib.aclosing(store.open(digest)) as chunks:
        return [chunk async for chunk in chunks]


async def test_documents_are_stored_by_digest_once(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    digest = await store.put(b"%PDF-1.7 one")
    assert digest == hashlib.sha256(b"%PDF-1.7 one").hexdigest()
    assert await store.put(b"%PDF-1.7 one") == digest
    assert await store.get(digest) == b"%PDF-1.7 one"
    assert await store.exists(digest)
    assert store.path(digest) == tmp_path / digest[:2] / digest[2:4] / digest
    assert not list(tmp_path.rglob(".tmp-*"))


async def test_a_stream_is_stored_under_its_digest_and_read_back_in_chunks(
    tmp_path: Path,
) -> None:
    store = FsStore(tmp_path)
    big = os.urandom(3 << 20)
    stored = await store.put_stream(_chunks(big[:1000], big[1000:], b""))
    assert stored.sha256 == hashlib.sha256(big).hexdigest()
    assert stored.size_bytes == len(big)
    chunks = await _read(store, stored.sha256)
    assert len(chunks) > 1 and b"".join(chunks) == big
    again = await store.put_stream(_chunks(big))
    assert again == stored
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [stored.sha256]


async def test_a_corrupt_document_is_refused_by_get_and_open(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    digest = await store.put(b"%PDF-1.7 two")
    store.path(digest).write_bytes(b"%PDF-1.7 tampered")
    with pytest.raises(StoreCorrupt):
        await store.get(digest)
    received: list[bytes] = []
    with pytest.raises(StoreCorrupt):
        async with contextlib.aclosing(store.open(digest)) as chunks:
            async for chunk in chunks:
                received.append(chunk)
    assert received == []


async def test_a_large_corrupt_object_never_reaches_the_reader_whole(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    data = os.urandom(3 << 20)
    digest = await store.put(data)
    store.path(digest).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    received: list[bytes] = []
    with pytest.raises(StoreCorrupt):
        async with contextlib.aclosing(store.open(digest)) as chunks:
            async for chunk in chunks:
                received.append(chunk)
    assert 0 < len(b"".join(received)) < len(data)


async def test_a_failing_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"%PDF-1.7 half"
        raise StoreUnavailable("the source went away")

    with pytest.raises(StoreUnavailable):
        await FsStore(tmp_path).put_stream(broken())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_a_missing_document_is_a_store_error(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    assert not await store.exists("ab" * 32)
    with pytest.raises(StoreUnavailable):
        await store.get("ab" * 32)
    with pytest.raises(StoreUnavailable):
        await _read(store, "ab" * 32)


async def test_an_unwritable_store_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = FsStore(tmp_path / "file" / "docs")  # a path through a file: ENOTDIR
    with pytest.raises(StoreUnavailable):
        await store.put(b"%PDF-1.7 three")
    with pytest.raises(StoreUnavailable):
        await store.put_stream(_chunks(b"%PDF-1.7 four"))


def test_a_name_that_is_not_a_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FsStore(tmp_path).path("../../etc/passwd")


async def test_a_batch_is_stored_whole_each_blob_once(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    first = await store.put(b"%PDF-1.7 already there")
    blobs = [b"%PDF-1.7 a", b"%PDF-1.7 b", b"%PDF-1.7 a", b"%PDF-1.7 already there"]
    digests = await store.put_many(blobs)
    assert digests == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert digests[3] == first
    for digest, data in zip(digests, blobs, strict=True):
        assert await store.get(digest) == data
    stored = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert stored == sorted(set(digests))
    assert await store.put_many([]) == []


async def test_hashed_blobs_are_stored_under_their_digest_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FsStore(tmp_path)
    blobs = [b"%PDF-1.7 hashed", b"%PDF-1.7 plain"]
    hashed = Hashed(blobs[0], hashlib.sha256(blobs[0]).hexdigest())
    hashes: list[int] = []
    real_sha256 = hashlib.sha256

    def counted(data: bytes = b"") -> Any:
        hashes.append(len(data))
        return real_sha256(data)

    monkeypatch.setattr(hashlib, "sha256", counted)
    digests = await store.put_many([hashed, blobs[1]])
    assert hashes == [len(blobs[1])]  # only the plain one was hashed
    monkeypatch.setattr(hashlib, "sha256", real_sha256)
    assert digests == [real_sha256(b).hexdigest() for b in blobs]
    assert [await store.get(d) for d in digests] == blobs


async def test_a_hashed_blob_under_a_wrong_digest_is_never_served(tmp_path: Path) -> None:
    # The pairing is the caller's word: a wrong one misnames the file, and every read
    # (and the audit walk) checks the bytes against the name.
    store = FsStore(tmp_path)
    wrong = hashlib.sha256(b"%PDF-1.7 other").hexdigest()
    (digest,) = await store.put_many([Hashed(b"%PDF-1.7 these", wrong)])
    assert digest == wrong
    with pytest.raises(StoreCorrupt):
        await store.get(wrong)


async def test_a_batch_fsyncs_each_file_before_its_rename_and_each_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FsStore(tmp_path)
    await store.put(b"%PDF-1.7 makes the root")
    events: list[tuple[str, str]] = []  # in order, from every thread
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src: str, dst: str) -> None:
        assert ("fsync", src) in events, "renamed before its bytes were durable"
        real_replace(src, dst)
        events.append(("rename", dst))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    blobs = [f"%PDF-1.7 {n}".encode() for n in range(7)]
    digests = await store.put_many(blobs)
    for digest in digests:
        target = str(store.path(digest))
        renamed = events.index(("rename", target))
        after = {path for kind, path in events[renamed + 1 :] if kind == "fsync"}
        # Every new directory is made durable in its parent: the leaf, ab/ and the root.
        leaf = os.path.dirname(target)
        assert {leaf, os.path.dirname(leaf), str(tmp_path)} <= after


async def test_a_failed_batch_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FsStore(tmp_path)
    real_fsync = os.fsync
    failed = threading.Lock()

    def failing(fd: int) -> None:
        # The first fsync of a temporary file fails, whichever thread's share it is in
        # (a count of calls across the shares' threads made which one fail a race).
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".tmp-") and failed.acquire(blocking=False):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    blobs = [b"%PDF-1.7 x", b"%PDF-1.7 y", b"%PDF-1.7 z"]
    with pytest.raises(StoreUnavailable):
        await store.put_many(blobs)
    # Each blob is whole or absent (a share of the batch may have been stored), no
    # temporary file is left, and the batch is stored when written again.
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.startswith(".tmp-")]
    assert len(left) < len(blobs)
    for path in left:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    monkeypatch.setattr(os, "fsync", real_fsync)
    digests = await store.put_many(blobs)
    assert [await store.get(d) for d in digests] == blobs


async def test_blobs_read_together_each_get_their_own_error(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    good, bad = await store.put_many([b"%PDF-1.7 good", b"%PDF-1.7 bad"])
    store.path(bad).write_bytes(b"%PDF-1.7 tampered")
    found = await store.get_many([good, "ab" * 32, bad, good])
    assert found[0] == found[3] == b"%PDF-1.7 good"
    assert isinstance(found[1], StoreUnavailable)
    assert isinstance(found[2], StoreCorrupt)
    assert await store.get_many([]) == []
