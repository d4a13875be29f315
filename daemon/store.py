"""Every version of every record, stored by its sha256; a small interface, a filesystem default."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from daemon.errors import StoreUnavailable


class DocumentStore(Protocol):
    async def put(self, data: bytes) -> str:
        """Store `data`; return its sha256 hex. Storing the same bytes twice is a no-op."""
        ...

    async def get(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`, checked against it."""
        ...


class FileStore:
    """Content-addressed files `ab/cd/abcd…`, written with fsync and an atomic rename."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def path(self, sha256: str) -> Path:
        return self._root / sha256[:2] / sha256[2:4] / sha256

    async def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._write, digest, data)
        return digest

    async def get(self, sha256: str) -> bytes:
        data = await asyncio.to_thread(self._read, sha256)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreUnavailable(f"Stored document {sha256[:12]}… is corrupt.")
        return data

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
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StoreUnavailable(f"Cannot store document: {exc.strerror}.") from exc

    def _read(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except OSError as exc:
            raise StoreUnavailable(f"Cannot read document {sha256[:12]}…: {exc.strerror}.") from exc


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
