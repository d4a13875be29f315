"""Retry-After parsing, how backoff and Retry-After combine, and the package streamed
from the blob store into the POST body (against a real local HTTP server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from daemon.blobs import FsStore
from daemon.errors import StoreCorrupt, StoreUnavailable
from daemon.packaging.submission import Submitter
from daemon.settings import MinistrySettings
from producers.ministry import MinistryClient, retry_after_s

AT = datetime(2026, 6, 30, 16, 0, 0, tzinfo=UTC)


def test_retry_after_in_seconds() -> None:
    assert retry_after_s("120", AT) == 120.0


def test_retry_after_as_an_http_date() -> None:
    assert retry_after_s("Tue, 30 Jun 2026 16:00:30 GMT", AT) == 30.0


def test_retry_after_in_the_past_means_now() -> None:
    assert retry_after_s("Tue, 30 Jun 2026 15:00:00 GMT", AT) == 0.0


def test_no_or_garbled_retry_after() -> None:
    assert retry_after_s(None, AT) is None
    assert retry_after_s("soon", AT) is None


def _submitter() -> Submitter:
    settings = MinistrySettings(retry_base_ms=1000, retry_cap_ms=8000, max_retry_after_s=60)
    return Submitter(db=None, ministry=None, settings=settings, blobs=None)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [_submitter()._delay_s(n, None, poll=False) for n in range(1, 6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_a_longer_retry_after_wins_but_is_capped() -> None:
    submitter = _submitter()
    assert submitter._delay_s(1, 30.0, poll=False) == 30.0
    assert submitter._delay_s(1, 3600.0, poll=False) == 60.0
    assert submitter._delay_s(4, 0.5, poll=False) == 8.0


class Receiver:
    """A ministry endpoint that keeps every complete body it received."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        return web.json_response({"receipt_id": "r-1", "status": "received"}, status=202)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    received = Receiver()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/packages", received.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield received, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _submit(url: str, store: FsStore, digest: str, size: int | None) -> object:
    settings = MinistrySettings(url=url, token=SecretStr("t"), request_timeout_s=10)
    async with aiohttp.ClientSession() as session:
        return await MinistryClient(session, settings, store).submit(digest, uuid.uuid4(), size)


async def test_the_package_is_streamed_from_the_store(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    received, url = receiver
    store = FsStore(tmp_path)
    package = os.urandom(5 << 20)
    digest = await store.put(package)
    receipt = await _submit(url, store, digest, len(package))
    assert receipt.receipt_id == "r-1"  # type: ignore[attr-defined]
    assert received.bodies == [package]
    assert received.headers[0]["Content-Length"] == str(len(package))
    assert received.headers[0]["Content-Type"] == "application/vnd.etsi.asic-e+zip"


async def test_a_corrupt_package_is_never_sent_whole(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    received, url = receiver
    store = FsStore(tmp_path)
    package = os.urandom(3 << 20)
    digest = await store.put(package)
    store.path(digest).write_bytes(package[:-1] + bytes([package[-1] ^ 1]))
    for size in (len(package), None):  # with Content-Length, and chunked
        with pytest.raises(StoreCorrupt):
            await _submit(url, store, digest, size)
    assert received.bodies == []


async def test_a_missing_package_is_a_store_error_not_a_ministry_one(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    received, url = receiver
    with pytest.raises(StoreUnavailable):
        await _submit(url, FsStore(tmp_path), "ab" * 32, None)
    assert received.bodies == []
