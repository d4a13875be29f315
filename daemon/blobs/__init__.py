"""Blobs: every version of every record and every package, named by its sha256.

* `BlobStore` (in `base`) is the one interface: `put`, `put_many` (a batch, durable
  together; a `Hashed` blob is stored under the digest it carries), `put_stream`,
  `get`, `open` (an async stream, checked as it goes), `exists`.
* `fs.FsStore` keeps them on one machine's disk; `s3.S3Store` in any S3-compatible
  object store, for instances on several machines.
* `open_store` builds the configured backend; only the composition roots call it
  (`daemon/app.py`, `daemon/commands/package_actions.py`, `daemon/dev/demo.py`) and pass the
  store down as a `BlobStore`.

It imports only the foundations (errors; settings for its types).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.blobs.base import CHUNK_BYTES, BlobReader, BlobStore, Hashed, StoredBlob
from daemon.blobs.fs import FsStore
from daemon.errors import StoreUnavailable

if TYPE_CHECKING:  # not imported at run time: the HSM workers import daemon.blobs.fs
    from daemon.settings import StoreSettings

__all__ = [
    "CHUNK_BYTES",
    "BlobReader",
    "BlobStore",
    "FsStore",
    "Hashed",
    "StoredBlob",
    "file_chunks",
    "open_store",
]


async def open_store(settings: StoreSettings, stack: contextlib.AsyncExitStack) -> BlobStore:
    """The configured store, checked reachable; `stack` closes its client."""
    if settings.backend == "fs":
        return FsStore(settings.path)
    from daemon.blobs import s3  # aiobotocore is loaded only where it is used

    store = await s3.connect(settings.s3, stack)
    await store.check()
    return store


async def file_chunks(path: Path) -> AsyncGenerator[bytes, None]:
    """A local file in chunks (to import one into a store); StoreUnavailable if unreadable."""
    try:
        handle = await asyncio.to_thread(path.open, "rb")
    except OSError as exc:
        raise StoreUnavailable(f"Cannot read {path.name}: {exc.strerror}.") from exc
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    except OSError as exc:
        raise StoreUnavailable(f"Cannot read {path.name}: {exc.strerror}.") from exc
    finally:
        handle.close()
