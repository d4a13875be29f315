"""`hocba-signer demo`: the whole flow on one machine, as a school system would drive it.

Provision the dev environment, start the ministry simulator and the daemon, publish
N records per school, take each to the next stage only when the previous status event
has arrived, write the issued PDFs to `output_dir/<school_id>/<record_id>.pdf`, then
package each school's round, submit it to the simulator and follow it until accepted,
copy each package from the blob store to `output_dir/<school_id>/<year>-round<R>.asice`;
validate every signature, and summarise in one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import secrets
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import aio_pika
from pydantic import SecretStr

from daemon import app, blobs, topology
from daemon.dev import env as devenv
from daemon.dev import ministry_sim, pki_services
from daemon.messages import RecordInfo
from daemon.packaging.packages import Package, PackageState
from daemon.packaging.runner import PackageRunner
from daemon.pdf import validation
from daemon.record.xml import record_sha256
from daemon.settings import Settings
from daemon.stages import ORDER, Stage, State
from producers.school_system import (
    sample_pdf,
    sample_record,
    sample_record_data,
    sign_request,
    sign_request_v2,
)

_NEXT = {State.SIGNED_BY_TEACHER: Stage.PRINCIPAL, State.SIGNED_BY_PRINCIPAL: Stage.SCHOOL_SEAL}


@dataclass
class Progress:
    total: int
    issued: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finished(self) -> int:
        return self.issued + self.rejected

    def show(self) -> None:
        if sys.stderr.isatty():
            width = 30
            filled = width * self.finished() // max(self.total, 1)
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r[{bar}] {self.issued} issued, {self.rejected} rejected")
            sys.stderr.flush()


async def run(
    base: Path, records: int, schools: int, output_dir: Path, timeout_s: float = 900
) -> dict[str, Any]:
    started = time.perf_counter()
    env = await devenv.init(
        base, schools, services_port=pki_services.DEFAULT_PORT, daemon_role=devenv.DEV_DAEMON_ROLE
    )
    output_dir = await asyncio.to_thread(output_dir.resolve)
    stop = asyncio.Event()
    token = SecretStr(await asyncio.to_thread(devenv.ministry_token, env.base))
    async with ministry_sim.running(
        token, env.settings.signing.trust_roots, output_dir / "ministry"
    ) as url:
        settings = _with_ministry(env.settings, url, token)
        async with contextlib.AsyncExitStack() as stack:
            if pki_services.load_config(env.base / "pki") is not None:  # OCSP, CRL, TSA
                await stack.enter_async_context(pki_services.running(env.base / "pki"))
            store = await blobs.open_store(settings.store, stack)
            running = await stack.enter_async_context(app.started(settings, stop))
            driver = Driver(env, output_dir, store)
            await driver.drive(records, timeout_s)
            finals = await _package_all(running.packages, env.schools, driver.rounds)
            await _export(store, finals, output_dir)
            stop.set()
    progress = driver.progress
    roots = env.settings.signing.trust_roots
    valid = await asyncio.to_thread(_validate_all, driver.issued, roots)
    return {
        "records": progress.total,
        "records_from_data": driver.from_data,
        "records_from_pdf": progress.total - driver.from_data,
        "issued": progress.issued,
        "rejected": progress.rejected,
        "reasons": progress.reasons,
        "valid_signatures": valid,
        "packages": len(finals),
        "accepted_by_ministry": sum(
            p.record_count for p in finals if p.state is PackageState.ACCEPTED
        ),
        "schools": len(env.schools),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "output_dir": str(output_dir),
    }


def _with_ministry(settings: Settings, url: str, token: SecretStr) -> Settings:
    """The dev settings, pointed at the in-process simulator, the schedule off."""
    return settings.model_copy(
        update={
            "ministry": settings.ministry.model_copy(
                update={"url": url, "token": token, "poll_base_ms": 200, "poll_cap_ms": 1000}
            ),
            "packaging": settings.packaging.model_copy(update={"schedule_interval_s": None}),
        }
    )


async def _package_all(
    runner: PackageRunner, schools: tuple[str, ...], rounds: set[tuple[str, int]]
) -> list[Package]:
    """Package and submit each school's rounds; the packages once the ministry decided."""
    for school in schools:
        for year, round_ in sorted(rounds):
            await runner.package(school, year, round_, submit=True)
    return await runner.settled()


async def _export(store: blobs.BlobStore, finals: list[Package], output_dir: Path) -> None:
    """Each package's blob, copied to `output_dir/<school_id>/<file name>` to look at."""
    for package in finals:
        assert package.sha256 is not None
        path = output_dir / package.school_id / package.file_name
        await asyncio.to_thread(_write, path, await store.get(package.sha256))


class Driver:
    """Publishes each record's first stage, then follows its status events to the seal."""

    def __init__(self, env: devenv.DevEnv, output_dir: Path, store: blobs.BlobStore) -> None:
        self.env = env
        self.output_dir = output_dir
        self.store = store
        self.issued: list[Path] = []
        self.progress = Progress(total=0)
        self.rounds: set[tuple[str, int]] = set()
        self.from_data = 0  # records sent as hocba.sign_request.v2 with record_data
        # Each record waits for the outcome of the one request last published for it.
        self._waiting: dict[tuple[str, str], tuple[RecordInfo, str]] = {}
        self._requests: aio_pika.abc.AbstractExchange | None = None

    async def drive(self, per_school: int, timeout_s: float) -> None:
        run_tag = secrets.token_hex(3)
        rng = random.Random(run_tag)
        self.progress.total = per_school * len(self.env.schools)
        connection = await aio_pika.connect_robust(self.env.settings.amqp.url)
        async with connection:
            channel = await connection.channel()
            self._requests = await channel.get_exchange(topology.REQUESTS)
            status = await channel.get_exchange(topology.STATUS)
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            for school in self.env.schools:
                await queue.bind(status, routing_key=f"status.{school}.#")
            await queue.consume(self._on_status)
            for i, school in enumerate(self.env.schools):
                for n in range(per_school):
                    info = sample_record(rng, school, run_tag, n)
                    self.rounds.add((info.academic_year, info.submission_round))
                    if i % 2:  # every second school sends its records as data
                        await self._publish_data(school, info, rng)
                        continue
                    pdf = sample_pdf(info, f"Trường Tiểu học {school}")
                    await self._publish(school, info, ORDER[0], _sha256(pdf), pdf)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.done.wait(), timeout_s)
        if sys.stderr.isatty():
            sys.stderr.write("\n")

    async def _publish_data(self, school: str, info: RecordInfo, rng: random.Random) -> None:
        """The teacher's request as v2: the record's data, which the daemon renders."""
        data = sample_record_data(rng, info, school)
        stage = ORDER[0]
        signer = self.env.signer_for(school, stage.value)
        digest = record_sha256(info.record_id, data)
        token = self.env.consent_signer(school).mint(signer, stage, [(info.record_id, digest)])
        self.from_data += 1
        await self._send(school, info, sign_request_v2(school, info, signer, token, data))

    async def _publish(
        self, school: str, info: RecordInfo, stage: Stage, digest: str, pdf: bytes | None = None
    ) -> None:
        signer = self.env.signer_for(school, stage.value)
        token = self.env.consent_signer(school).mint(signer, stage, [(info.record_id, digest)])
        await self._send(school, info, sign_request(school, info, stage, signer, token, pdf))

    async def _send(self, school: str, info: RecordInfo, request: tuple[str, bytes, str]) -> None:
        assert self._requests is not None
        key, body, rid = request
        message = aio_pika.Message(
            body,
            content_type="application/json",
            message_id=rid,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        self._waiting[(school, info.record_id)] = (info, rid)
        await self._requests.publish(message, routing_key=key)

    async def _on_status(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            key = (event["school_id"], event.get("record_id"))
            waiting = self._waiting.get(key)
            if waiting is None or waiting[1] != event["request_id"]:
                return  # not ours, or a repeated event for an earlier stage
            del self._waiting[key]
            await self._advance(event, waiting[0], key)

    async def _advance(self, event: dict[str, Any], info: RecordInfo, key: tuple[str, str]) -> None:
        state = State(event["state"])
        if state in _NEXT:
            await self._publish(key[0], info, _NEXT[state], event["document_sha256"])
            return
        if state is State.ISSUED:
            path = self.output_dir / key[0] / f"{key[1]}.pdf"
            data = await self.store.get(event["document_sha256"])
            await asyncio.to_thread(_write, path, data)
            self.issued.append(path)
            self.progress.issued += 1
        else:
            code = (event.get("reason") or {}).get("code", "unknown")
            self.progress.reasons[code] = self.progress.reasons.get(code, 0) + 1
            self.progress.rejected += 1
        self.progress.show()
        if self.progress.finished() >= self.progress.total:
            self.progress.done.set()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _validate_all(paths: list[Path], roots: list[Path]) -> int:
    """How many signatures in the issued PDFs validate (intact, valid, trusted)."""
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        counts = pool.map(_valid_signatures, paths, [roots] * len(paths))
        return sum(counts)


def _valid_signatures(path: Path, roots: list[Path]) -> int:
    reports = validation.validate_pdf(path.read_bytes(), validation.load_certificates(roots))
    return sum(1 for r in reports if r.bottom_line)
