"""`hocba-signer mock-ministry`: the ministry package API, simulated faithfully.

POST /v1/packages takes a container (bearer token, Idempotency-Key), stores it under
`store_dir/<receipt_id>.asice` and answers 202 with a receipt; the same key again
gives the same receipt (a different body under a known key is 409). Each package is
then really checked (daemon.packaging.check: every byte of the ZIP accounted for,
safe names, manifest digests, the seal by the package's own school's seal certificate,
records.json, and each PDF by the verdict rule: three sound signatures, each by the
right role of that school, three distinct signers), and
GET /v1/packages/<receipt_id> reports `received` until the check is done and the
acceptance delay has passed, then `accepted` or `rejected` with the problems found.

Receipts are kept as `store_dir/<receipt_id>.receipt.json` (written atomically when
the package is stored and again when its check ends) and reloaded at start, so a
restarted simulator answers a known key with the same receipt and still knows old
receipts; a package whose check had not ended is checked again.

Faults, for tests and rehearsals of 30 June: latency, 5xx at a rate, 429 with
Retry-After at a rate, connections dropped after the package was stored (the
answer is lost, the receipt is not), slow acceptance, and receipts forgotten (the
first N receipts polled are deleted and answered 404, as by a ministry that lost them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from asn1crypto import x509
from pydantic import SecretStr

from daemon.packaging import check
from daemon.packaging.check import PackageReport
from daemon.packaging.container import MIMETYPE
from daemon.pdf import validation
from daemon.settings import VerificationSettings

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
    # The first N receipts polled are forgotten (deleted) and answered 404.
    forget_receipts: int = 0
    # The first N requests past the token check are answered 503, whatever the rates:
    # a test that must see faults bite cannot depend on the dice.
    fail_first: int = 0
    seed: int | None = None


@dataclass
class Received:
    receipt_id: str
    key: str
    body_sha256: str
    path: Path
    at: float  # wall-clock time it was received (time.time()), kept across restarts
    status: str = "received"  # received until checked, then accepted or rejected
    errors: list[Any] = field(default_factory=list)
    accepted_records: int = 0
    report: PackageReport | None = None  # only for a check made by this process
    checked: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "idempotency_key": self.key,
            "status": self.status,
            "errors": self.errors,
            "accepted_records": self.accepted_records,
            "path": str(self.path),
            "sha256": self.body_sha256,
            "received_at": self.at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Received:
        return cls(
            receipt_id=data["receipt_id"],
            key=data["idempotency_key"],
            body_sha256=data["sha256"],
            path=Path(data["path"]),
            at=float(data["received_at"]),
            status=data["status"],
            errors=list(data.get("errors") or []),
            accepted_records=int(data.get("accepted_records") or 0),
        )


RECEIPT_SUFFIX = ".receipt.json"


class MinistrySimulator:
    def __init__(
        self,
        token: SecretStr,
        trust_roots: list[x509.Certificate],
        store_dir: Path,
        faults: Faults = Faults(),
        rules: VerificationSettings | None = None,
    ) -> None:
        self.token = token
        # What a certificate must say to sign each field (the package's school, the role).
        self.rules = rules or VerificationSettings()
        self.trust_roots = trust_roots
        self.store_dir = store_dir
        self.faults = faults
        self.by_key: dict[str, Received] = {}
        self.by_receipt: dict[str, Received] = {}
        self.posts = 0
        self.forgotten = 0
        self.faults_injected = 0
        self.changed = asyncio.Condition()
        self._rng = random.Random(faults.seed)
        self._checks: set[asyncio.Task[None]] = set()
        # Receipt files are written and deleted under it: a check ending cannot
        # write back a receipt that was just forgotten.
        self._files = asyncio.Lock()
        self._load()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/packages", self.post)
        app.router.add_get("/v1/packages/{receipt_id}", self.get)
        app.on_startup.append(self._check_unchecked)
        app.on_cleanup.append(self._cancel_checks)
        return app

    def _load(self) -> None:
        """The receipts a previous run stored (a damaged file is skipped, and logged)."""
        if not self.store_dir.is_dir():
            return
        for file in sorted(self.store_dir.glob(f"*{RECEIPT_SUFFIX}")):
            try:
                received = Received.from_json(json.loads(file.read_text("utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("Skipping unreadable receipt file %s: %s", file.name, exc)
                continue
            if received.status != "received":
                received.checked.set()
            self.by_key[received.key] = received
            self.by_receipt[received.receipt_id] = received
        if self.by_receipt:
            log.info("Reloaded %d receipts from %s.", len(self.by_receipt), self.store_dir)

    async def _check_unchecked(self, _: web.Application) -> None:
        for received in self.by_receipt.values():
            if received.status == "received":
                self._start_check(received)

    async def forget(self, receipt_id: str) -> None:
        """Lose a receipt and its package, as a ministry might: the key becomes unknown."""
        async with self._files:
            received = self.by_receipt.pop(receipt_id, None)
            if received is None:
                return
            if self.by_key.get(received.key) is received:
                del self.by_key[received.key]
            for file in (
                self.store_dir / f"{receipt_id}{RECEIPT_SUFFIX}",
                received.path,
                received.path.with_suffix(".json"),
            ):
                await asyncio.to_thread(file.unlink, missing_ok=True)
        log.info("Forgot receipt %s (key %s).", receipt_id, received.key)

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
        if received is not None and self.forgotten < self.faults.forget_receipts:
            self.forgotten += 1
            await self.forget(received.receipt_id)
            received = None
        if received is None:
            return _error(404, "No such receipt.")
        if received.status == "received" or time.time() - received.at < self.faults.accept_delay_s:
            return web.json_response({"status": "received", "errors": [], "accepted_records": 0})
        return web.json_response(
            {
                "status": received.status,
                "errors": received.errors,
                "accepted_records": received.accepted_records,
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
        if self.faults_injected < self.faults.fail_first:
            self.faults_injected += 1
            return _error(503, "Simulated outage (one of the first requests).")
        if self._roll(self.faults.error_rate):
            return _error(503, "Simulated outage.")
        if self._roll(self.faults.throttle_rate):
            response = _error(429, "Too many requests.")
            response.headers["Retry-After"] = str(self.faults.retry_after_s)
            return response
        return None

    def _roll(self, rate: float) -> bool:
        if rate > 0 and self._rng.random() < rate:
            self.faults_injected += 1
            return True
        return False

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
        received = Received(receipt_id, key, sha256, path, time.time())
        # Known before the next await, so a concurrent POST of the key gets this receipt.
        self.by_key[key] = received
        self.by_receipt[receipt_id] = received
        await asyncio.to_thread(tmp.rename, path)
        async with self._files:
            await self._persist(received)  # durable before it is answered
        self._start_check(received)
        log.info("Received package under key %s: receipt %s.", key, receipt_id)
        return received, sha256

    def _start_check(self, received: Received) -> None:
        task = asyncio.create_task(self._check(received), name=f"check-{received.receipt_id}")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _persist(self, received: Received) -> None:
        """Write the receipt's file atomically (temporary file, fsync, rename)."""
        final = self.store_dir / f"{received.receipt_id}{RECEIPT_SUFFIX}"
        text = json.dumps(received.to_json(), ensure_ascii=False, indent=2)
        await asyncio.to_thread(_write_atomically, final, text)

    async def _check(self, received: Received) -> None:
        report = await asyncio.to_thread(
            functools.partial(check.check_package, rules=self.rules),
            received.path,
            self.trust_roots,
        )
        async with self._files:
            if self.by_receipt.get(received.receipt_id) is not received:
                return  # forgotten meanwhile
            received.report = report
            received.status = "accepted" if report.valid else "rejected"
            received.errors = [asdict(p) for p in report.problems]
            received.accepted_records = report.index.get("records", 0) if report.valid else 0
            await self._persist(received)
            summary = {
                "receipt_id": received.receipt_id,
                "idempotency_key": received.key,
                "sha256": received.body_sha256,
                "valid": report.valid,
                "problems": [asdict(p) for p in report.problems],
                "index": report.index,
            }
            text = json.dumps(summary, ensure_ascii=False, indent=2)
            summary_path = received.path.with_suffix(".json")
            await asyncio.to_thread(summary_path.write_text, text, "utf-8")
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


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
    roots = validation.load_certificates(trust_roots)
    runner = await serve(MinistrySimulator(token, roots, store_dir, faults), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
