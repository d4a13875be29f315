"""The `s3` backend: blobs as objects `<prefix>ab/cd/abcd…` in any S3-compatible store.

For instances on several machines: they share the bucket instead of a folder. The
client is aiobotocore (aio-libs: botocore's request signing, retries and error model
on the aiohttp the daemon already uses). Every upload carries its Content-MD5, so the
server refuses bytes damaged on the way; every read is checked against the sha256.
A package is uploaded in parts under a temporary key while its digest is computed,
then copied server-side to its content address (S3 has no rename). botocore and
aiohttp errors become StoreUnavailable here, once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from daemon.blobs.base import (
    CHUNK_BYTES,
    Hashed,
    StoredBlob,
    check,
    data_of,
    key_of,
    verified,
)
from daemon.errors import StoreCorrupt, StoreUnavailable
from daemon.settings import S3Settings

log = logging.getLogger(__name__)

BACKEND = "s3"
# S3's smallest part but the last; a package is held in memory one part at a time.
PART_BYTES = 8 << 20
_MISSING = {"404", "NoSuchKey", "NotFound"}


async def connect(settings: S3Settings, stack: contextlib.AsyncExitStack) -> S3Store:
    """A client for the configured bucket, closed by `stack`; no request made yet."""
    secret = settings.resolved_secret_access_key()
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=settings.max_connections,
        s3={"addressing_style": settings.addressing_style},
        # Checksums only where S3 requires them: many S3-compatible stores refuse the
        # aws-chunked trailers botocore adds otherwise. Content-MD5 is sent instead.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = await stack.enter_async_context(
        get_session().create_client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=config,
        )
    )
    return S3Store(client, settings.bucket, settings.key_prefix)


@contextlib.asynccontextmanager
async def _translated(doing: str) -> AsyncIterator[None]:
    """botocore's and aiohttp's failures as StoreUnavailable."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))
        what = "no such object" if code in _MISSING else f"S3 error {code}"
        raise StoreUnavailable(f"Cannot {doing}: {what}.") from exc
    except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
        raise StoreUnavailable(f"Cannot {doing}: {type(exc).__name__}.") from exc


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix

    def key(self, sha256: str) -> str:
        return self._prefix + key_of(sha256)

    @property
    def local_root(self) -> str | None:
        return None  # the HSM workers hand their PDFs back; the daemon uploads them

    async def check(self) -> None:
        """Raise StoreUnavailable unless the bucket answers (start-up, readiness)."""
        async with _translated(f"reach bucket {self._bucket}"):
            await self._client.head_bucket(Bucket=self._bucket)

    async def put(self, data: bytes) -> str:
        return await self._put(data, hashlib.sha256(data).hexdigest())

    async def _put(self, data: bytes, digest: str) -> str:
        # Always written, never skipped when present: content-addressed, so rewriting
        # is harmless, and it repairs an object found corrupt.
        async with _translated(f"store blob {digest[:12]}…"):
            await self._client.put_object(
                Bucket=self._bucket, Key=self.key(digest), Body=data, ContentMD5=_md5(data)
            )
        return digest

    async def put_many(self, blobs: Sequence[bytes | Hashed]) -> list[str]:
        """Each blob uploaded concurrently (the client's pool bounds the connections).

        A `Hashed` blob is hashed again here and refused if its digest is not its
        bytes': an upload always overwrites, so a wrong pairing would replace the good
        object of that digest. Beside an HTTP round trip the hash costs little.
        """
        puts = (self._put(data_of(blob), _checked(blob)) for blob in blobs)
        results = await asyncio.gather(*puts, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [str(result) for result in results]

    async def get_many(self, digests: Sequence[str]) -> list[bytes | Exception]:
        found = await asyncio.gather(*(self.get(d) for d in digests), return_exceptions=True)
        for result in found:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return found  # type: ignore[return-value]  # no BaseException left

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> StoredBlob:
        digest = hashlib.sha256()
        size = 0
        part = bytearray()
        upload: _Upload | None = None
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                part += chunk
                if len(part) >= PART_BYTES:
                    upload = upload or await self._start_upload()
                    await upload.send(bytes(part))
                    part.clear()
            sha256 = digest.hexdigest()
            if upload is None:
                await self.put(bytes(part))
                return StoredBlob(sha256, size)
            if part:
                await upload.send(bytes(part))
            await upload.complete()
            async with _translated(f"store blob {sha256[:12]}…"):
                await self._client.copy_object(
                    Bucket=self._bucket,
                    Key=self.key(sha256),
                    CopySource={"Bucket": self._bucket, "Key": upload.key},
                )
        finally:
            if upload is not None:
                await upload.discard()
        return StoredBlob(sha256, size)

    async def get(self, sha256: str) -> bytes:
        async with _translated(f"read blob {sha256[:12]}…"):
            response = await self._client.get_object(Bucket=self._bucket, Key=self.key(sha256))
            async with response["Body"] as body:
                data = await body.read()
        return check(data, sha256, BACKEND)

    async def open(self, sha256: str) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(verified(self._chunks(sha256), sha256, BACKEND)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def exists(self, sha256: str) -> bool:
        async with _translated(f"look up blob {sha256[:12]}…"):
            try:
                await self._client.head_object(Bucket=self._bucket, Key=self.key(sha256))
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return False
                raise
        return True

    async def _chunks(self, sha256: str) -> AsyncGenerator[bytes, None]:
        async with _translated(f"read blob {sha256[:12]}…"):
            response = await self._client.get_object(Bucket=self._bucket, Key=self.key(sha256))
            async with response["Body"] as body:
                async for chunk in body.iter_chunks(CHUNK_BYTES):
                    yield chunk

    async def _start_upload(self) -> _Upload:
        key = f"{self._prefix}incoming/{uuid.uuid4()}"
        async with _translated("start an upload"):
            started = await self._client.create_multipart_upload(Bucket=self._bucket, Key=key)
        return _Upload(self._client, self._bucket, key, started["UploadId"])


class _Upload:
    """A multipart upload to a temporary key, discarded whatever happens."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        self._client = client
        self._bucket = bucket
        self.key = key
        self._id = upload_id
        self._parts: list[dict[str, Any]] = []
        self._completed = False

    async def send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        async with _translated(f"upload part {number}"):
            sent = await self._client.upload_part(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._id,
                PartNumber=number,
                Body=data,
                ContentMD5=_md5(data),
            )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    async def complete(self) -> None:
        async with _translated("complete an upload"):
            await self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._id,
                MultipartUpload={"Parts": self._parts},
            )
        self._completed = True

    async def discard(self) -> None:
        # Best effort: a leftover under `incoming/` is garbage, never a blob (a bucket
        # lifecycle rule on the prefix cleans up after a crash).
        try:
            async with _translated("discard an upload"):
                if self._completed:
                    await self._client.delete_object(Bucket=self._bucket, Key=self.key)
                else:
                    await self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=self.key, UploadId=self._id
                    )
        except StoreUnavailable as exc:
            log.warning("Temporary upload %s left behind: %s", self.key, exc.message)


def _checked(blob: bytes | Hashed) -> str:
    """The blob's digest, always hashed here; a Hashed one's must be the same."""
    digest = hashlib.sha256(data_of(blob)).hexdigest()
    if isinstance(blob, Hashed) and blob.sha256 != digest:
        raise StoreCorrupt(f"Refused to store bytes under another digest ({blob.sha256[:12]}…).")
    return digest


def _md5(data: bytes) -> str:
    # Integrity of the upload, checked by the server; not a name or a security check.
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
