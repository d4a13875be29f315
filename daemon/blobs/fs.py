"""The `fs` backend: blobs as files `<root>/ab/cd/abcd…` on one machine's disk.

Written with fsync, an atomic rename and a directory fsync, so a blob is either whole
or absent after a crash. The layout is documented and stable: backup tools, the chaos
suite's validators and `aws s3 sync` (to move to the `s3` backend) may read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from typing import BinaryIO

from daemon.blobs.base import CHUNK_BYTES, StoredBlob, check, key_of, verified
from daemon.errors import StoreUnavailable

BACKEND = "fs"


class FsStore:
    def __init__(self, root: Path) -> None:
        self._root = root

    def path(self, sha256: str) -> Path:
        """Where the blob lies (the documented layout); it may not exist."""
        return self._root / key_of(sha256)

    async def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._write, digest, data)
        return digest

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
        path = self.path(sha256)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise _unreadable(sha256, exc) from exc
        return check(data, sha256, BACKEND)

    async def open(self, sha256: str) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(verified(self._chunks(sha256), sha256, BACKEND)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path(sha256).is_file)

    async def _chunks(self, sha256: str) -> AsyncGenerator[bytes, None]:
        try:
            handle = await asyncio.to_thread(self.path(sha256).open, "rb")
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

    def _write(self, digest: str, data: bytes) -> None:
        target = self.path(digest)
        if target.exists():
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    _sync(handle)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StoreUnavailable(f"Cannot store a blob: {exc.strerror}.") from exc

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


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
