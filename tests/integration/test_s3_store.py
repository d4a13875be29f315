"""The `s3` blob backend against a real S3 server (SeaweedFS), requests signed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemon import blobs
from daemon.blobs import BlobStore, Hashed
from daemon.blobs.s3 import PART_BYTES, connect
from daemon.errors import StoreCorrupt, StoreUnavailable
from daemon.settings import StoreSettings
from tests.s3_server import S3Server, s3, s3_server  # noqa: F401


@contextlib.asynccontextmanager
async def opened(settings: StoreSettings) -> AsyncIterator[BlobStore]:
    async with contextlib.AsyncExitStack() as stack:
        yield await blobs.open_store(settings, stack)


async def _read(store: BlobStore, digest: str, into: list[bytes] | None = None) -> bytes:
    received = [] if into is None else into
    async with contextlib.aclosing(store.open(digest)) as chunks:
        async for chunk in chunks:
            received.append(chunk)
    return b"".join(received)


async def _keys(server: S3Server, bucket: str) -> list[str]:
    async with server.client() as client:
        listed: Any = await client.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def test_blobs_are_stored_once_under_their_digest(
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
) -> None:
    settings = s3.model_copy(update={"s3": s3.s3.model_copy(update={"key_prefix": "hocba/"})})
    async with opened(settings) as store:
        digest = await store.put(b"%PDF-1.7 one")
        assert digest == hashlib.sha256(b"%PDF-1.7 one").hexdigest()
        assert await store.put(b"%PDF-1.7 one") == digest
        assert await store.get(digest) == b"%PDF-1.7 one"
        assert await _read(store, digest) == b"%PDF-1.7 one"
        assert await store.exists(digest)
        assert not await store.exists("ab" * 32)
    assert await _keys(s3_server, s3.s3.bucket) == [f"hocba/{digest[:2]}/{digest[2:4]}/{digest}"]


async def test_a_large_stream_is_uploaded_in_parts_and_read_back(
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
) -> None:
    data = os.urandom(2 * PART_BYTES + 12345)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    async with opened(s3) as store:
        stored = await store.put_stream(chunks())
        assert (stored.sha256, stored.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))
        received: list[bytes] = []
        assert await _read(store, stored.sha256, received) == data
        assert len(received) > 1
        assert await store.put_stream(chunks()) == stored
    # The temporary upload key is gone: only the content address is left.
    digest = stored.sha256
    assert await _keys(s3_server, s3.s3.bucket) == [f"{digest[:2]}/{digest[2:4]}/{digest}"]


async def test_an_object_changed_behind_the_store_is_never_served(
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
) -> None:
    data = os.urandom(3 << 20)
    async with opened(s3) as store:
        digest = await store.put(data)
        async with s3_server.client() as client:
            await client.put_object(  # type: ignore[attr-defined]
                Bucket=s3.s3.bucket,
                Key=f"{digest[:2]}/{digest[2:4]}/{digest}",
                Body=data[:-1] + bytes([data[-1] ^ 1]),
            )
        with pytest.raises(StoreCorrupt):
            await store.get(digest)
        received: list[bytes] = []
        with pytest.raises(StoreCorrupt):
            await _read(store, digest, received)
        assert len(b"".join(received)) < len(data)  # the reader never had it whole
        # Putting the right bytes again repairs it.
        await store.put(data)
        assert await store.get(digest) == data


async def test_a_store_that_is_down_is_unavailable(
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
) -> None:
    with socket_bound() as port:
        dead = s3.s3.model_copy(
            update={"endpoint_url": f"http://127.0.0.1:{port}", "max_attempts": 1}
        )
        with pytest.raises(StoreUnavailable):
            async with opened(s3.model_copy(update={"s3": dead})):
                pass
        async with contextlib.AsyncExitStack() as stack:
            store = await connect(dead, stack)
            for attempt in (
                store.put(b"%PDF-1.7"),
                store.get("ab" * 32),
                store.exists("ab" * 32),
                _read(store, "ab" * 32),
            ):
                with pytest.raises(StoreUnavailable):
                    await attempt


async def test_unsigned_or_wrongly_signed_requests_and_missing_buckets_are_refused(
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
    tmp_path: Any,
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret")
    forged = s3.s3.model_copy(update={"secret_access_key_file": wrong})
    with pytest.raises(StoreUnavailable):
        async with opened(s3.model_copy(update={"s3": forged})):
            pass
    missing = s3.s3.model_copy(update={"bucket": "hocba-no-such-bucket"})
    with pytest.raises(StoreUnavailable):
        async with opened(s3.model_copy(update={"s3": missing})):
            pass


@contextlib.contextmanager
def socket_bound() -> Any:
    """A loopback port that is bound but never listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_a_batch_is_written_and_read_together_each_blob_its_own_error(
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
) -> None:
    async with opened(s3) as store:
        blobs_in = [b"%PDF-1.7 batch a", b"%PDF-1.7 batch b"]
        digests = await store.put_many(blobs_in)
        assert digests == [hashlib.sha256(b).hexdigest() for b in blobs_in]
        found = await store.get_many([digests[1], "cd" * 32, digests[0]])
        assert found[0] == blobs_in[1] and found[2] == blobs_in[0]
        assert isinstance(found[1], StoreUnavailable)
        assert await store.put_many([]) == [] and await store.get_many([]) == []


async def test_a_hashed_blob_whose_digest_is_not_its_bytes_is_refused_not_uploaded(
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
) -> None:
    # An upload overwrites: a wrong pairing must not replace the good object.
    async with opened(s3) as store:
        good = b"%PDF-1.7 the good object"
        digest = await store.put(good)
        right = Hashed(b"%PDF-1.7 other", hashlib.sha256(b"%PDF-1.7 other").hexdigest())
        assert await store.put_many([right]) == [right.sha256]
        with pytest.raises(StoreCorrupt):
            await store.put_many([Hashed(b"%PDF-1.7 not the good object", digest)])
        assert await store.get(digest) == good
