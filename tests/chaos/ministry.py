"""The ministry in the chaos run: `hocba-signer mock-ministry` as a subprocess, reached
by the daemons through a fault gate whose failure modes are switched during the run.

Why a gate rather than restarting the simulator with other fault flags: the simulator
keeps its receipts (Idempotency-Key → receipt) in memory, so a restart would forget
them; a package sent again after it would get a second receipt and a submitted one
would poll a receipt that no longer exists. The gate gives the same faults (latency,
503 at a rate, 429 with Retry-After, connections dropped after the simulator stored
the package) at the same place, while the simulator keeps every receipt.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from daemon.packaging.container import INDEX
from tests.chaos.services import VENV_BIN, _killpg, free_port, wait_port


class MinistrySimulator:
    """`hocba-signer mock-ministry` on a private port, storing under `<base>/ministry`."""

    def __init__(self, base: Path, token_file: Path, trust_root: Path, accept_delay_s: float):
        self.dir = base / "ministry"
        self.port = free_port()
        self.token_file = token_file
        self.trust_root = trust_root
        self.accept_delay_s = accept_delay_s
        self.log = base / "ministry.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(VENV_BIN / "hocba-signer"), "mock-ministry", "--port", str(self.port),
                    "--dir", str(self.dir), "--token-file", str(self.token_file),
                    "--trust-root", str(self.trust_root),
                    "--accept-delay-s", str(self.accept_delay_s),
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )  # fmt: skip
        wait_port(self.port)

    def stop(self) -> None:
        _killpg(self.process, signal.SIGTERM)
        self.process = None

    def stored(self) -> list[dict[str, Any]]:
        """Every package the simulator stored: its check summary and the record ids inside."""
        found = []
        for summary_path in sorted(self.dir.glob("*.json")):
            if summary_path.name.endswith(".receipt.json"):
                continue  # the simulator's own receipt file, not its check summary
            summary = json.loads(summary_path.read_text("utf-8"))
            with zipfile.ZipFile(summary_path.with_suffix(".asice")) as archive:
                index = json.loads(archive.read(INDEX))
            summary["record_ids"] = [str(r["record_id"]) for r in index["records"]]
            found.append(summary)
        return found


@dataclass
class GateFaults:
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: int = 2
    drop_rate: float = 0.0  # POSTs forwarded, then the answer lost
    latency_ms: int = 0

    def describe(self) -> str:
        return (
            f"503 {self.error_rate:.0%}, 429 {self.throttle_rate:.0%} "
            f"(Retry-After {self.retry_after_s}s), dropped after storing {self.drop_rate:.0%}, "
            f"+{self.latency_ms} ms"
        )


@dataclass
class MinistryGate:
    """A reverse proxy in front of the simulator, failing on purpose when told to."""

    upstream: str
    rng: random.Random
    port: int = field(default_factory=free_port)
    faults: GateFaults = field(default_factory=GateFaults)
    counts: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults
        kind = "post" if request.method == "POST" else "poll"
        self.counts[kind] += 1
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if self._roll(faults.error_rate):
            self.counts[f"{kind} 503"] += 1
            return web.json_response({"error": "Simulated outage (chaos gate)."}, status=503)
        if self._roll(faults.throttle_rate):
            self.counts[f"{kind} 429"] += 1
            response = web.json_response({"error": "Too many requests."}, status=429)
            response.headers["Retry-After"] = str(faults.retry_after_s)
            return response
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "idempotency-key")
        }
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
        if kind == "post" and status == 202 and self._roll(faults.drop_rate):
            self.counts["post dropped after storing"] += 1
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        response = web.Response(body=payload, status=status)
        response.headers["Content-Type"] = content_type
        return response
