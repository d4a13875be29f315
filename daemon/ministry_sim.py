"""`hocba-signer mock-ministry`: the ministry package API, simulated faithfully.

POST /v1/packages takes a container (bearer token, Idempotency-Key), stores it under
`store_dir/<receipt_id>.asice` and answers 202 with a receipt; the same key again
gives the same receipt (a different body under a known key is 409). Each package is
then really checked (daemon.package_check: ZIP structure, manifest digests, CAdES
against the trust roots, three valid PAdES signatures per PDF, records.json), and
GET /v1/packages/<receipt_id> reports `received` until the check is done and the
acceptance delay has passed, then `accepted` or `rejected` with the problems found.

Faults, for tests and rehearsals of 30 June: latency, 5xx at a rate, 429 with
Retry-After at a rate, connections dropped after the package was stored (the
answer is lost, the receipt is not), and slow acceptance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiohttp import web
from asn1crypto import x509
from pydantic import SecretStr

from daemon import package_check, pades
from daemon.asice import MIMETYPE
from daemon.package_check import PackageReport

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 30
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: int = 1
    drop_rate: float = 0.0
    accept_delay_s: float = 0.0
    seed: int | None = None


@dataclass
class Received:
    receipt_id: str
    key: str
    body_sha256: str
    path: Path
    at: float
    report: PackageReport | None = None
    checked: asyncio.Event = field(default_factory=asyncio.Event)


class MinistrySimulator:
    def __init__(
        self,
        token: SecretStr,
        trust_roots: list[x509.Certificate],
        store_dir: Path,
        faults: Faults = Faults(),
    ) -> None:
        self.token = token
        self.trust_roots = trust_roots
        self.store_dir = store_dir
        self.faults = faults
        self.by_key: dict[str, Received] = {}
        self.by_receipt: dict[str, Received] = {}
        self.posts = 0
        self.changed = asyncio.Condition()
        self._rng = random.Random(faults.seed)
        self._checks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/packages", self.post)
        app.router.add_get("/v1/packages/{receipt_id}", self.get)
        app.on_cleanup.append(self._cancel_checks)
        return app

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 120) -> None:
        """For tests: wait (without polling) until `predicate()` holds."""
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(predicate)

    async def post(self, request: web.Request) -> web.StreamResponse:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        if request.content_type != MIMETYPE:
            return _error(415, f"Content-Type must be {MIMETYPE}.")
        key = request.headers.get("Idempotency-Key", "").strip()
        if not key or len(key) > 200:
            return _error(400, "An Idempotency-Key header (at most 200 characters) is required.")
        self.posts += 1
        received, sha256 = await self._store(request, key)
        if received.body_sha256 != sha256:
            return _error(409, f"Idempotency-Key {key} was used for a different package.")
        async with self.changed:
            self.changed.notify_all()
        if self._roll(self.faults.drop_rate):
            log.info("Dropping the connection after storing receipt %s.", received.receipt_id)
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp ends the handler without an answer
        return web.json_response(
            {"receipt_id": received.receipt_id, "status": "received"}, status=202
        )

    async def get(self, request: web.Request) -> web.Response:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        received = self.by_receipt.get(request.match_info["receipt_id"])
        if received is None:
            return _error(404, "No such receipt.")
        loop = asyncio.get_running_loop()
        report = received.report
        if report is None or loop.time() - received.at < self.faults.accept_delay_s:
            return web.json_response({"status": "received", "errors": [], "accepted_records": 0})
        status = "accepted" if report.valid else "rejected"
        return web.json_response(
            {
                "status": status,
                "errors": [asdict(p) for p in report.problems],
                "accepted_records": report.index.get("records", 0) if report.valid else 0,
            }
        )

    async def _gate(self, request: web.Request) -> web.Response | None:
        """Latency, the bearer token, then the configured failures."""
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        expected = f"Bearer {self.token.get_secret_value()}".encode()
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(401, "Missing or wrong bearer token.")
        if self._roll(self.faults.error_rate):
            return _error(503, "Simulated outage.")
        if self._roll(self.faults.throttle_rate):
            response = _error(429, "Too many requests.")
            response.headers["Retry-After"] = str(self.faults.retry_after_s)
            return response
        return None

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    async def _store(self, request: web.Request, key: str) -> tuple[Received, str]:
        """Stream the body to a file, hashing it; the known receipt if the key is known."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.store_dir / f".upload-{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        handle = await asyncio.to_thread(tmp.open, "wb")
        try:
            async for chunk in request.content.iter_chunked(CHUNK_BYTES):
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
        finally:
            await asyncio.to_thread(handle.close)
        sha256 = digest.hexdigest()
        known = self.by_key.get(key)
        if known is not None:
            await asyncio.to_thread(tmp.unlink)
            return known, sha256
        receipt_id = secrets.token_hex(12)
        path = self.store_dir / f"{receipt_id}.asice"
        await asyncio.to_thread(tmp.rename, path)
        received = Received(receipt_id, key, sha256, path, asyncio.get_running_loop().time())
        self.by_key[key] = received
        self.by_receipt[receipt_id] = received
        task = asyncio.create_task(self._check(received), name=f"check-{receipt_id}")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        log.info("Received package under key %s: receipt %s.", key, receipt_id)
        return received, sha256

    async def _check(self, received: Received) -> None:
        report = await asyncio.to_thread(
            package_check.check_package, received.path, self.trust_roots
        )
        received.report = report
        summary = {
            "receipt_id": received.receipt_id,
            "idempotency_key": received.key,
            "sha256": received.body_sha256,
            "valid": report.valid,
            "problems": [asdict(p) for p in report.problems],
            "index": report.index,
        }
        text = json.dumps(summary, ensure_ascii=False, indent=2)
        await asyncio.to_thread(received.path.with_suffix(".json").write_text, text, "utf-8")
        received.checked.set()
        log.info(
            "Checked receipt %s: %s.",
            received.receipt_id,
            "valid" if report.valid else f"{len(report.problems)} problems",
        )
        async with self.changed:
            self.changed.notify_all()

    async def _cancel_checks(self, _: web.Application) -> None:
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def serve(sim: MinistrySimulator, host: str, port: int) -> web.AppRunner:
    """Start the simulator; the caller cleans the runner up."""
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


@contextlib.asynccontextmanager
async def running(
    token: SecretStr, trust_roots: list[Path], store_dir: Path, faults: Faults = Faults()
) -> AsyncIterator[str]:
    """A simulator on a free local port, for the demo; yields its base URL."""
    roots = pades.load_certificates(trust_roots)
    runner = await serve(MinistrySimulator(token, roots, store_dir, faults), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
