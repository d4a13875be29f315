"""The ministry package API, client side: one HTTP request per call, errors translated.

`submit` streams the container from the blob store into the POST body (chunk by
chunk, checked against its digest as it goes: a corrupt package is never sent whole)
with the package id as Idempotency-Key; `receipt` reads a receipt. What a retry may fix (connection
refused or dropped, timeout, 408, 429, 5xx) becomes MinistryUnavailable, with the
server's Retry-After when it gave one; any other refusal becomes MinistryRefused.
Retrying is the caller's business (daemon.submission).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from uuid import UUID

import aiohttp
from pydantic import SecretStr

from daemon.blobs import BlobStore
from daemon.errors import HocbaError, MinistryRefused, MinistryUnavailable
from daemon.packaging.container import MIMETYPE
from daemon.packaging.submission import Receipt
from daemon.settings import MinistrySettings

_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
_STATUSES = ("received", "accepted", "rejected")


def retry_after_s(header: str | None, at: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not header:
        return None
    value = header.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - at).total_seconds())


class MinistryClient:
    def __init__(
        self, session: aiohttp.ClientSession, settings: MinistrySettings, blobs: BlobStore
    ) -> None:
        self._session = session
        self._base = settings.url.rstrip("/")
        self._settings = settings
        self._blobs = blobs
        self._token: SecretStr | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s
        )

    async def submit(self, sha256: str, package_id: UUID, size_bytes: int | None) -> Receipt:
        headers = {
            "Content-Type": MIMETYPE,
            "Idempotency-Key": str(package_id),
            **self._auth(),
        }
        if size_bytes is not None:
            headers["Content-Length"] = str(size_bytes)
        body = _Body(self._blobs, sha256)
        try:
            answer = await self._request(
                "POST", "/v1/packages", headers=headers, data=body.chunks()
            )
        except (MinistryUnavailable, MinistryRefused):
            # The store failed, not the ministry (which may have answered the broken
            # body with a 400): say so, or the package would be taken for rejected.
            body.raise_failure()
            raise
        body.raise_failure()
        return _receipt(answer)

    async def receipt(self, receipt_id: str) -> Receipt:
        body = await self._request("GET", f"/v1/packages/{receipt_id}", headers=self._auth())
        return _receipt({"receipt_id": receipt_id, **body})

    def _auth(self) -> dict[str, str]:
        # Read on first use: a daemon that never submits needs no token.
        if self._token is None:
            self._token = self._settings.resolved_token()
        return {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self._base + path
        try:
            async with self._session.request(
                method, url, timeout=self._timeout, **kwargs
            ) as response:
                text = await response.text()
                if response.status in (200, 202):
                    return _json(text, response.status)
                wait = retry_after_s(response.headers.get("Retry-After"), datetime.now(UTC))
                message = f"{method} {path} answered {response.status}: {_error_text(text)}"
                if response.status in _RETRYABLE:
                    raise MinistryUnavailable(message, wait)
                raise MinistryRefused(message, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MinistryUnavailable(
                f"{method} {path} failed: {type(exc).__name__}: {exc}"
            ) from exc


class _Body:
    """The package streamed from the store; remembers a store failure, which aiohttp
    would otherwise report as a broken connection."""

    def __init__(self, blobs: BlobStore, sha256: str) -> None:
        self._blobs = blobs
        self._sha256 = sha256
        self.failure: HocbaError | None = None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            async with contextlib.aclosing(self._blobs.open(self._sha256)) as stream:
                async for chunk in stream:
                    yield chunk
        except HocbaError as exc:
            self.failure = exc
            raise

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


def _json(text: str, status: int) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise MinistryUnavailable(f"The ministry answered {status} with non-JSON.") from exc
    if not isinstance(body, dict):
        raise MinistryUnavailable(f"The ministry answered {status} with a non-object.")
    return body


def _receipt(body: dict[str, Any]) -> Receipt:
    status = body.get("status")
    receipt_id = body.get("receipt_id")
    if status not in _STATUSES or not isinstance(receipt_id, str) or not receipt_id:
        raise MinistryUnavailable(f"The ministry's answer is not a receipt: {body!r:.200}.")
    errors = body.get("errors") or []
    return Receipt(
        receipt_id=receipt_id,
        status=status,
        errors=list(errors) if isinstance(errors, list) else [errors],
        accepted_records=int(body.get("accepted_records") or 0),
    )


def _error_text(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200] or "no body"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])[:500]
    return text[:200]
