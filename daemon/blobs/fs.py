"""The `fs` backend: blobs as files `<root>/ab/cd/abcd…` on one machine's disk.

Written with fsync, an atomic rename and a directory fsync, so a blob is either whole
or absent after a crash. The layout is documented and stable: backup tools, the chaos
suite's validators and `aws s3 sync` (to move to the `s3` backend) may read it.

`put_many` stores a batch in a few thread hops (one per `SHARE` blobs, so that their
disk waits overlap): in each, every file is written and fsynced, then renamed into
place, then each directory touched is fsynced once; a directory created on the way is
fsynced in its parent too. It returns once all of that is done. `write_now` does the
same in the calling thread, for a process with no event loop: the HSM workers store
each PDF they sign themselves (`local_root`), so that it never crosses back to the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from pathlib import Path
from typing import BinaryIO

from daemon.blobs.base import (
    CHUNK_BYTES,
    Hashed,
    StoredBlob,
    check,
    data_of,
    digest_of,
    key_of,
    verified,
)
from daemon.errors import StoreCorrupt, StoreUnavailable

BACKEND = "fs"
# Blobs of a batch one thread writes and fsyncs in turn: 2, 4 and 16 cost the same CPU
# (measured), 2 waited least.
SHARE = 2
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class FsStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._root_text = str(root)

    @property
    def local_root(self) -> str | None:
        """The root, where the HSM workers store the PDFs they sign (`write_now`)."""
        return self._root_text

    def path(self, sha256: str) -> Path:
        """Where the blob lies (the documented layout); it may not exist."""
        return self._root / key_of(sha256)

    def _file(self, sha256: str) -> str:
        """`path` as a plain string, for this store's own reads and writes.

        Not a Path: pathlib interns every part of every path it parses, so one per
        blob name grew the interpreter's interned-string table (a 3.7 MB resize that
        gdb caught in the 80-minute soak of 2026-12-02).
        """
        return os.path.join(self._root_text, key_of(sha256))

    async def put(self, data: bytes) -> str:
        (digest,) = await self.put_many([data])
        return digest

    async def put_many(self, blobs: Sequence[bytes | Hashed]) -> list[str]:
        # A few threads, each writing and fsyncing a share: the disk waits overlap, for
        # a thread hop per share rather than per blob.
        shares = [blobs[n : n + SHARE] for n in range(0, len(blobs), SHARE)]
        written = await asyncio.gather(
            *(asyncio.to_thread(self.write_now, share) for share in shares),
            return_exceptions=True,
        )
        digests: list[str] = []
        for share in written:
            if isinstance(share, BaseException):
                raise share
            digests.extend(share)
        return digests

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> StoredBlob:
        handle, tmp = await asyncio.to_thread(self._incoming)
        digest = hashlib.sha256()
        size = 0
        try:
            try:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
                await asyncio.to_thread(_sync_and_close, handle)
            finally:
                handle.close()
            sha256 = digest.hexdigest()
            await asyncio.to_thread(self._settle, tmp, sha256)
        except OSError as exc:
            raise StoreUnavailable(f"Cannot store a blob: {exc.strerror}.") from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return StoredBlob(sha256, size)

    async def get(self, sha256: str) -> bytes:
        try:
            data = await asyncio.to_thread(_read, self._file(sha256))
        except OSError as exc:
            raise _unreadable(sha256, exc) from exc
        return check(data, sha256, BACKEND)

    async def get_many(self, digests: Sequence[str]) -> list[bytes | Exception]:
        if not digests:
            return []
        return await asyncio.to_thread(self.read_now, digests)

    def read_now(self, digests: Sequence[str]) -> list[bytes | Exception]:
        """`get_many` in the calling thread (the digests are not the event loop's work)."""
        found: list[bytes | Exception] = []
        for sha256 in digests:
            try:
                found.append(check(_read(self._file(sha256)), sha256, BACKEND))
            except OSError as exc:
                found.append(_unreadable(sha256, exc))
            except StoreCorrupt as exc:
                found.append(exc)
        return found

    async def open(self, sha256: str) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(verified(self._chunks(sha256), sha256, BACKEND)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(os.path.isfile, self._file(sha256))

    async def _chunks(self, sha256: str) -> AsyncGenerator[bytes, None]:
        try:
            handle = await asyncio.to_thread(open, self._file(sha256), "rb")
        except OSError as exc:
            raise _unreadable(sha256, exc) from exc
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(handle.read, CHUNK_BYTES)
                except OSError as exc:
                    raise _unreadable(sha256, exc) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()

    def _incoming(self) -> tuple[BinaryIO, Path]:
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._root, prefix=".tmp-")
        except OSError as exc:
            raise StoreUnavailable(f"Cannot store a blob: {exc.strerror}.") from exc
        return os.fdopen(fd, "wb"), Path(tmp)

    def write_now(self, blobs: Sequence[bytes | Hashed]) -> list[str]:
        """`put_many` in the calling thread: each blob durable once it returns."""
        digests = [digest_of(blob) for blob in blobs]
        todo: dict[str, bytes] = {}  # target -> bytes; the same bytes twice are written once
        for digest, blob in zip(digests, blobs, strict=True):
            target = self._file(digest)
            if target not in todo and not os.path.exists(target):
                todo[target] = data_of(blob)
        if todo:
            try:
                self._write_durably(todo)
            except OSError as exc:
                raise StoreUnavailable(f"Cannot store a blob: {exc.strerror}.") from exc
        return digests

    def _write_durably(self, todo: dict[str, bytes]) -> None:
        written: list[tuple[str, str]] = []  # (temporary file, target)
        directories: set[str] = set()
        try:
            fds: list[int] = []
            try:
                for target, data in todo.items():
                    fd, tmp = self._create(os.path.dirname(target), directories)
                    fds.append(fd)
                    written.append((tmp, target))
                    _write_all(fd, data)
                for fd in fds:
                    os.fsync(fd)  # each file whole on disk before its name points at it
            finally:
                for fd in fds:
                    os.close(fd)
            for tmp, target in written:
                os.replace(tmp, target)
        except BaseException:
            for tmp, _ in written:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        # The renames are durable once the directory entries are.
        directories.update(os.path.dirname(target) for target in todo)
        for directory in directories:
            _fsync_dir(directory)

    def _create(self, directory: str, created: set[str]) -> tuple[int, str]:
        """A new temporary file in `directory`, made (with its parents) if missing.

        The parents of a directory made here go in `created`, to be fsynced: the new
        directories' own entries must be durable too.
        """
        tmp = os.path.join(directory, f".tmp-{os.urandom(8).hex()}")
        try:
            return os.open(tmp, _WRITE_FLAGS, 0o644), tmp
        except FileNotFoundError:
            pass
        os.makedirs(directory, exist_ok=True)
        parent = os.path.dirname(directory)  # ab/, holding cd/
        created.update((parent, os.path.dirname(parent)))  # and the root, holding ab/
        return os.open(tmp, _WRITE_FLAGS, 0o644), tmp

    def _settle(self, tmp: Path, sha256: str) -> None:
        """Move a streamed, synced temporary file to its place, unless the blob is there."""
        target = self.path(sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        _fsync_dir(self._root)


def _unreadable(sha256: str, exc: OSError) -> StoreUnavailable:
    return StoreUnavailable(f"Cannot read blob {sha256[:12]}…: {exc.strerror}.")


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _sync_and_close(handle: BinaryIO) -> None:
    _sync(handle)
    handle.close()


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path | str) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
