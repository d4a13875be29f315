"""The blob store's one interface, and the digest check every backend shares.

A blob is named by the sha256 of its bytes, so a name can always be checked: `get`
checks the whole object, `open` checks it as it streams and holds back the last chunk
until the digest matched, so a consumer never receives the whole of a corrupt object.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from daemon.errors import StoreCorrupt

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Hashed:
    """Bytes with the sha256 this daemon computed from these very bytes, to store as is.

    Each version the pipeline stores was hashed once already: a teacher's document when
    intake checked it against its announced digest (or when it was rendered), a signed
    PDF by the HSM worker that made it. Hashing ~150 KB again costs ~0.1 ms of CPU, a
    few times a record. The `fs` store takes the digest as is: a wrong pairing would
    misname a new file (one already there is never rewritten), which `get` and the
    audit walk, checking every blob against its name, would refuse. The `s3` store,
    whose uploads overwrite, hashes again and refuses a wrong pairing.
    """

    data: bytes = field(repr=False)
    sha256: str


def digest_of(blob: bytes | Hashed) -> str:
    return blob.sha256 if isinstance(blob, Hashed) else hashlib.sha256(blob).hexdigest()


def data_of(blob: bytes | Hashed) -> bytes:
    return blob.data if isinstance(blob, Hashed) else blob


class BlobReader(Protocol):
    async def get(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`, checked against it."""
        ...


class BlobStore(BlobReader, Protocol):
    """Content-addressed blobs: every version of every record, and every package.

    Raises StoreUnavailable when the store is down, unreachable or lacks the object,
    and StoreCorrupt when an object's bytes do not match its digest.
    """

    async def put(self, data: bytes) -> str:
        """Store `data`; return its sha256 hex. Storing the same bytes twice is a no-op."""
        ...

    async def put_many(self, blobs: Sequence[bytes | Hashed]) -> list[str]:
        """Store each of `blobs`, all durable once it returns; their sha256 hex, in order.

        A `Hashed` blob is stored under the digest it carries, not hashed again.

        If it raises, any of them may or may not be stored (each whole or absent).
        """
        ...

    async def get_many(self, digests: Sequence[str]) -> list[bytes | Exception]:
        """Each blob's bytes, checked, or the StoreUnavailable/StoreCorrupt it alone got."""
        ...

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> StoredBlob:
        """Store bytes arriving in chunks (a package being built), never all in memory."""
        ...

    def open(self, sha256: str) -> AsyncGenerator[bytes, None]:
        """The object's bytes in chunks; raises StoreCorrupt before the last one if they
        do not match `sha256`. Close it (`contextlib.aclosing`) when stopping early."""
        ...

    async def exists(self, sha256: str) -> bool: ...

    @property
    def local_root(self) -> str | None:
        """A directory of this machine's disk in which other processes (the HSM workers)
        may store blobs themselves with `FsStore(root).write_now`; None if remote."""
        ...


def key_of(sha256: str) -> str:
    """`ab/cd/abcd…`: the object's place in either backend (a file path, an S3 key)."""
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"Not a sha256 hex digest: {sha256[:70]!r}.")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def corrupt(sha256: str, backend: str) -> StoreCorrupt:
    """The error for an object whose bytes do not match its name, logged loudly once."""
    log.error("Stored object %s in the %s store does not match its digest: refused.",
              sha256, backend)  # fmt: skip
    return StoreCorrupt(f"Stored object {sha256[:12]}… is corrupt; it was not served.")


def check(data: bytes, sha256: str, backend: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise corrupt(sha256, backend)
    return data


async def verified(
    chunks: AsyncGenerator[bytes, None], sha256: str, backend: str
) -> AsyncGenerator[bytes, None]:
    """`chunks`, passed on one behind, the last only once the whole digest matched."""
    digest = hashlib.sha256()
    held: bytes | None = None
    async with contextlib.aclosing(chunks) as source:
        async for chunk in source:
            if not chunk:
                continue
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
    if digest.hexdigest() != sha256:
        raise corrupt(sha256, backend)
    if held is not None:
        yield held
