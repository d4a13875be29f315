"""The `fs` blob backend: content-addressed, durable, and never serving a corrupt object."""

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.blobs import FsStore
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
