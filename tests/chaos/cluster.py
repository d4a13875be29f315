"""The chaos run's cluster: private services, daemons, and the faults it can suffer.

`start_cluster` brings up PostgreSQL, RabbitMQ, Mosquitto, a p11-kit-served token, the
ministry (behind a gate that injects its faults) and the daemons; `Cluster`'s methods
are the faults (`tests/chaos/run.py` cycles through them, the soak uses none).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from daemon.dev import env as devenv
from tests.chaos.driver import Driver
from tests.chaos.ministry import GateFaults, MinistryGate, MinistrySimulator
from tests.chaos.services import (
    Daemon,
    Mosquitto,
    P11KitServer,
    Postgres,
    RabbitMQ,
    TmpfsStore,
    daemon_env,
)


@dataclass(frozen=True)
class Size:
    schools: int
    records_per_school: int
    instances: int
    spread_s: float  # first stages are published over this long
    fault_rounds: int
    settle_timeout_s: float
    ministry_fault_s: float  # how long the ministry fails while packages are submitted


SIZES = {
    "ci": Size(2, 20, 2, 60, 1, 240, 15),
    "small": Size(3, 50, 3, 100, 1, 300, 25),
    "full": Size(4, 300, 3, 600, 4, 1200, 40),
}

# The round the school system's records belong to (producers.school_system.sample_record).
YEAR, ROUND = "2025-2026", 1
MINISTRY_FAULTS = GateFaults(
    error_rate=0.35, throttle_rate=0.2, retry_after_s=2, drop_rate=0.4, latency_ms=400
)


@dataclass
class Fault:
    name: str
    at_s: float
    duration_s: float = 0.0
    detail: str = ""


@dataclass
class Cluster:
    base: Path
    pg: Postgres
    rabbit: RabbitMQ
    mosquitto: Mosquitto
    p11kit: P11KitServer
    store: TmpfsStore
    env: devenv.DevEnv
    daemons: list[Daemon]
    rng: random.Random
    ministry: MinistrySimulator
    gate: MinistryGate
    size: Size
    driver: Driver | None = None
    started: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # daemons a fault is holding down
    unexpected_exits: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    async def fault(
        self, name: str, down: Callable[[], object], up: Callable[[], object], hold_s: float
    ) -> None:
        fault = Fault(name, round(self.now(), 1))
        result = await asyncio.to_thread(down)
        await asyncio.sleep(hold_s)
        await asyncio.to_thread(up)
        fault.duration_s = round(self.now() - fault.at_s, 1)
        fault.detail = str(result) if result is not None else ""
        self.faults.append(fault)

    async def kill_instance(
        self, victim: Daemon | None = None, name: str = "kill -9 daemon instance", why: str = ""
    ) -> None:
        if victim is None:
            running = [d for d in self.daemons if d.running and d.name not in self.held]
            if not running:
                return
            victim = self.rng.choice(running)
        chosen = victim
        self.held.add(chosen.name)
        try:
            pid = chosen.process.pid if chosen.process else 0
            await self.fault(
                name,
                lambda: (chosen.kill(), f"{chosen.name} (pid {pid}){why}")[1],
                chosen.start,
                self.rng.uniform(0.5, 3),
            )
        finally:
            self.held.discard(chosen.name)

    async def rabbit_restart(self) -> None:
        await self.fault("RabbitMQ restart", self.rabbit.stop, self.rabbit.start, 2)

    async def postgres_restart(self) -> None:
        await self.fault(
            "PostgreSQL restart (immediate stop)",
            lambda: self.pg.stop("immediate"),
            self.pg.start,
            4,
        )

    async def mqtt_down(self) -> None:
        await self.fault("MQTT broker down", self.mosquitto.stop, self.mosquitto.start, 15)

    async def hsm_away(self) -> None:
        await self.fault(
            "HSM away (p11-kit server stopped)", self.p11kit.stop, self.p11kit.start, 10
        )

    async def disk_full(self) -> None:
        if not self.store.mounted:
            self.faults.append(Fault("disk full on the store", self.now(), 0, "skipped: no tmpfs"))
            return
        await self.fault(
            "disk full on the document store (tmpfs)",
            lambda: f"filled {self.store.fill() >> 20} MiB",
            self.store.free,
            12,
        )

    async def ministry_faults(self) -> None:
        """The ministry failing, slow and rate-limiting while every school's package of the
        round is requested and submitted; the instance submitting one is killed meanwhile."""
        assert self.driver is not None
        fault = Fault("ministry failing, slow, rate-limiting", round(self.now(), 1))
        before = Counter(self.gate.counts)
        self.gate.faults = MINISTRY_FAULTS
        for school in self.env.schools:
            await self.driver.request_package(school, YEAR, ROUND)
        await self.kill_submitter(timeout_s=self.size.ministry_fault_s - 4)
        await asyncio.sleep(max(fault.at_s + self.size.ministry_fault_s - self.now(), 0))
        self.gate.faults = GateFaults()
        fault.duration_s = round(self.now() - fault.at_s, 1)
        counts = self.gate.counts - before
        fault.detail = (
            f"{MINISTRY_FAULTS.describe()}; {len(self.env.schools)} package requests; "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
        self.faults.append(fault)

    async def kill_submitter(self, timeout_s: float) -> None:
        """kill -9 the instance following a package that is being submitted."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = await _packages_in(self.env.settings.database.dsn, ("submitting", "submitted"))
            for package_id, state in sorted(found, key=lambda p: p[1]):
                for daemon in self.daemons:
                    if (
                        daemon.running
                        and daemon.name not in self.held
                        and _logged(daemon.log, f"Created package {package_id}")
                    ):
                        why = f", following package {package_id[:8]} ({state})"
                        await self.kill_instance(daemon, "kill -9 daemon during submission", why)
                        return
            await asyncio.sleep(0.3)
        self.faults.append(
            Fault("kill -9 daemon during submission", round(self.now(), 1), 0, "skipped: none seen")
        )

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart an instance that exited on its own (e.g. started while PG was down)."""
        while not stop.is_set():
            for daemon in self.daemons:
                if daemon.name not in self.held and daemon.process and not daemon.running:
                    self.unexpected_exits += 1
                    uptime_s = time.monotonic() - daemon.started_at
                    code = daemon.process.returncode
                    self.faults.append(
                        Fault(
                            "  (instance exited by itself; restarted)",
                            round(self.now(), 1),
                            0,
                            f"{daemon.name} exit {code} after {uptime_s:.1f}s up",
                        )
                    )
                    await asyncio.to_thread(daemon.start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2)


async def _packages_in(dsn: str, states: tuple[str, ...]) -> list[tuple[str, str]]:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return []
    try:
        rows = await conn.fetch(
            "SELECT package_id::text, state FROM packages WHERE state = ANY($1::text[])",
            list(states),
        )
    finally:
        await conn.close()
    return [(r[0], r[1]) for r in rows]


def _logged(log: Path, text: str) -> bool:
    try:
        return text in log.read_text("utf-8", errors="replace")
    except OSError:
        return False


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(1)
    return False


async def ready(daemons: list[Daemon], timeout_s: float = 90) -> None:
    async with aiohttp.ClientSession() as http:

        async def all_ready() -> bool:
            for daemon in daemons:
                try:
                    async with http.get(f"http://127.0.0.1:{daemon.http_port}/readyz") as r:
                        if r.status != 200:
                            return False
                except aiohttp.ClientError:
                    return False
            return True

        if not await wait_until(all_ready, timeout_s):
            raise RuntimeError("the daemons did not become ready; see their logs")


async def start_cluster(
    base: Path,
    size: Size,
    rng: random.Random,
    *,
    small_store: bool = True,
    instance_env: dict[int, dict[str, str]] | None = None,
) -> Cluster:
    """The private services and daemons; `small_store` puts the documents on a small
    tmpfs that the disk-full fault can fill (a soak needs the room instead);
    `instance_env`: more environment for daemon N (from 1), to compare settings."""
    tag = secrets.token_hex(3)
    pg, rabbit, mosquitto = Postgres(base), RabbitMQ(base, tag), Mosquitto(base)
    await asyncio.to_thread(pg.init)
    await asyncio.gather(
        asyncio.to_thread(pg.start),
        asyncio.to_thread(rabbit.start),
        asyncio.to_thread(mosquitto.start),
    )
    env = await devenv.init(base / "dev", size.schools, dsn=pg.dsn, amqp_url=rabbit.url)
    store = TmpfsStore(
        env.settings.store.path, size_mb=64 if size.records_per_school < 100 else 256
    )
    if small_store:
        store.mount()
    p11kit = P11KitServer(base, env.settings.hsm.token_label, env.settings.hsm.env)
    await asyncio.to_thread(p11kit.start)
    token_file = base / "dev" / "ministry-token"
    devenv.ministry_token(token_file.parent)
    ministry = MinistrySimulator(base, token_file, env.settings.signing.trust_roots[0], 2)
    await asyncio.to_thread(ministry.start)
    gate = MinistryGate(ministry.url, random.Random(rng.random()))
    await gate.start()
    extra = daemon_env(mosquitto, p11kit, retry_cap_ms=3000, max_attempts=60)
    extra |= {
        "HOCBA_MINISTRY__URL": gate.url,
        "HOCBA_MINISTRY__TOKEN_FILE": str(token_file),
        "HOCBA_MINISTRY__CONNECT_TIMEOUT_S": "3",
        "HOCBA_MINISTRY__REQUEST_TIMEOUT_S": "30",
        "HOCBA_MINISTRY__RETRY_BASE_MS": "200",
        "HOCBA_MINISTRY__RETRY_CAP_MS": "2000",
        "HOCBA_MINISTRY__MAX_RETRY_AFTER_S": "3",
        "HOCBA_MINISTRY__POLL_BASE_MS": "500",
        "HOCBA_MINISTRY__POLL_CAP_MS": "2000",
        "HOCBA_PACKAGING__PATH": str(base / "packages"),
        # Outside the round's window (the schedule builds nothing by itself), but each
        # tick resumes unfinished packages, e.g. those of a killed instance.
        "HOCBA_PACKAGING__SCHEDULE_INTERVAL_S": "5",
    }
    daemons = [
        Daemon(
            f"chaos-{n + 1}",
            env.config_path,
            extra | (instance_env or {}).get(n + 1, {}),
            base / f"daemon-{n + 1}.log",
        )
        for n in range(size.instances)
    ]
    cluster = Cluster(
        base, pg, rabbit, mosquitto, p11kit, store, env, daemons, rng, ministry, gate, size
    )
    for daemon in daemons:
        daemon.start()
    await ready(daemons)
    return cluster


def stop_cluster(cluster: Cluster | None, base: Path, keep: bool) -> None:
    if cluster is not None:
        for daemon in cluster.daemons:
            daemon.kill()
        cluster.p11kit.stop()
        cluster.ministry.stop()
        cluster.mosquitto.stop()
        cluster.rabbit.stop()
        cluster.pg.stop("immediate")
        cluster.store.unmount()
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
