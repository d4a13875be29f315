"""The chaos run: private services, several daemons, a school system, faults, proofs.

    python -m tests.chaos --size small     # make chaos CHAOS_SIZE=small

Prints the faults injected and one line per invariant ending in `holds` or `VIOLATED`;
returns 1 if any invariant is violated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from daemon.dev import env as devenv
from daemon.stages import Stage
from producers.school_system import sample_pdf, sample_record, sign_request
from tests.chaos import invariants
from tests.chaos.driver import Driver, MqttRecorder
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


FAULT_CYCLE = (
    "kill_instance",
    "hsm_away",
    "kill_instance",
    "rabbit_restart",
    "kill_instance",
    "postgres_restart",
    "mqtt_down",
    "disk_full",
    "kill_instance",
    "ministry_faults",
)


async def inject(cluster: Cluster, rounds: int, gap_s: float) -> None:
    await asyncio.sleep(5)
    for round_ in range(rounds):
        for name in FAULT_CYCLE:
            if name == "ministry_faults" and round_:
                continue
            await getattr(cluster, name)()
            await asyncio.sleep(gap_s)


async def publish_load(cluster: Cluster, driver: Driver, size: Size) -> None:
    total = size.schools * size.records_per_school
    pause = size.spread_s / total
    bad_every = max(total // 12, 1)
    for n in range(total):
        await driver.start_record(cluster.env.schools[n % size.schools])
        if n % bad_every == 0:
            await send_bad(cluster, driver, n // bad_every)
        await asyncio.sleep(pause)


async def send_bad(cluster: Cluster, driver: Driver, n: int) -> None:
    """Deliberately bad inputs, one kind after another; each must end in the DLQ."""
    school = cluster.env.schools[0]
    info = sample_record(random.Random(n), school, f"bad{secrets.token_hex(2)}", n)
    pdf = sample_pdf(info, "bad", pages=1)
    digest = hashlib.sha256(pdf).hexdigest()
    signer = cluster.env.signer_for(school, "homeroom_teacher")
    own = cluster.env.consent_signer(school)
    other = cluster.env.consent_signer(cluster.env.schools[1])
    good = own.mint(signer, Stage.HOMEROOM_TEACHER, [(info.record_id, digest)])
    foreign = other.mint(signer, Stage.HOMEROOM_TEACHER, [(info.record_id, digest)])
    gif = b"GIF89a not a record"
    gif_digest = hashlib.sha256(gif).hexdigest()
    gif_consent = own.mint(signer, Stage.HOMEROOM_TEACHER, [(info.record_id, gif_digest)])
    another_key = f"sign.{cluster.env.schools[1]}"
    good_body = _req(school, info, signer, good, pdf)[1]
    kinds: list[tuple[str, Callable[[], tuple[str, bytes]]]] = [
        ("malformed JSON", lambda: (f"sign.{school}", b'{"type": "hocba.sign_req')),
        ("consent of another school", lambda: _req(school, info, signer, foreign, pdf)),
        ("not a PDF", lambda: _req(school, info, signer, gif_consent, gif)),
        ("unknown school", lambda: _req("39999999", info, "GV-0001", "a.b.c", pdf)),
        ("principal first", lambda: _req(school, info, "BGH-0001", good, None, Stage.PRINCIPAL)),
        ("routing key of another school", lambda: (another_key, good_body)),
    ]  # fmt: skip
    name, build = kinds[n % len(kinds)]
    key, body = build()
    await driver.send_bad(name, key, body)


def _req(school, info, signer, token, pdf, stage=Stage.HOMEROOM_TEACHER) -> tuple[str, bytes]:
    key, body, _ = sign_request(school, info, stage, signer, token, pdf)
    return key, body


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


async def outbox_drained(dsn: str, driver: Driver, mqtt: MqttRecorder) -> bool:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        ids = {str(r[0]) for r in await conn.fetch("SELECT DISTINCT event_id FROM outbox")}
        pending = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE amqp_published_at IS NULL "
            "OR mqtt_published_at IS NULL"
        )
    finally:
        await conn.close()
    return pending == 0 and ids <= set(driver.amqp_events) and ids <= set(mqtt.events)


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


async def run(size_name: str, keep: bool = False) -> int:
    size = SIZES[size_name]
    seed = secrets.token_hex(3)
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="hocba-chaos-"))
    os.chmod(base, 0o755)
    print(f"chaos {size_name}: {size} seed {seed}, under {base}", flush=True)
    cluster: Cluster | None = None
    try:
        cluster = await start_cluster(base, size, rng)
        print(f"cluster ready in {cluster.now():.0f}s", flush=True)
        checks, driver = await drive(cluster, size, seed)
        report(cluster, driver, checks, size_name)
        return 0 if all(c.holds for c in checks) else 1
    finally:
        if cluster is not None:
            await cluster.gate.stop()
        await asyncio.to_thread(stop_cluster, cluster, base, keep)


async def drive(cluster: Cluster, size: Size, seed: str):
    env = cluster.env
    stop = asyncio.Event()
    async with (
        Driver(env, env.settings.amqp.url, seed) as driver,
        MqttRecorder(cluster.mosquitto.port, env.settings.mqtt.topic_prefix) as mqtt,
    ):
        cluster.driver = driver
        supervisor = asyncio.create_task(cluster.supervise(stop))
        resender = asyncio.create_task(_resend(driver, stop))
        gap_s = max(size.spread_s / (len(FAULT_CYCLE) * size.fault_rounds) - 8, 2)
        await asyncio.gather(
            publish_load(cluster, driver, size), inject(cluster, size.fault_rounds, gap_s)
        )
        print(f"load and faults done at {cluster.now():.0f}s; settling", flush=True)

        async def settled() -> bool:
            return driver.pending() == 0

        await wait_until(settled, size.settle_timeout_s)
        print(f"records settled at {cluster.now():.0f}s; packaging", flush=True)
        await package_all(cluster, driver, size.settle_timeout_s)
        await wait_until(lambda: outbox_drained(env.settings.database.dsn, driver, mqtt), 90)
        stop.set()
        await asyncio.gather(supervisor, resender)
        for daemon in cluster.daemons:
            await asyncio.to_thread(daemon.stop)
        checks = await invariants.verify(
            env.settings.database.dsn,
            env.settings.amqp.url,
            env.settings.store.path,
            env.settings.signing.trust_roots,
            driver,
            mqtt,
            cluster.ministry,
        )
    return checks, driver


async def package_all(cluster: Cluster, driver: Driver, timeout_s: float) -> None:
    """Request every school's package of the round until each issued record is in a
    package and every package is accepted or rejected (a rejected package's records
    are requested again)."""
    dsn = cluster.env.settings.database.dsn
    asked_at = -1e9

    async def done() -> bool:
        nonlocal asked_at
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            waiting = await conn.fetch(
                """SELECT DISTINCT school_id FROM records r WHERE signatures = 3
                   AND NOT EXISTS (SELECT 1 FROM package_records p WHERE p.active
                                   AND p.school_id = r.school_id AND p.record_id = r.record_id)"""
            )
            unfinished = await conn.fetchval(
                "SELECT count(*) FROM packages WHERE state NOT IN ('accepted', 'rejected')"
            )
        finally:
            await conn.close()
        if waiting and time.monotonic() - asked_at > 30:
            asked_at = time.monotonic()
            for row in waiting:
                await driver.request_package(row[0], YEAR, ROUND)
        return not waiting and unfinished == 0

    if not await wait_until(done, timeout_s):
        print("packages still unfinished; the invariants will say which", flush=True)


async def _resend(driver: Driver, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 10)
        await driver.resend_stale(older_than_s=90)


def report(cluster: Cluster, driver: Driver, checks: list[invariants.Check], size: str) -> None:
    print()
    print(f"{'fault':<42} {'at_s':>7} {'for_s':>7}  detail")
    for fault in sorted(cluster.faults, key=lambda f: f.at_s):
        print(f"{fault.name:<42} {fault.at_s:>7.1f} {fault.duration_s:>7.1f}  {fault.detail}")
    restarts = sum(d.starts - 1 for d in cluster.daemons)
    gate = ", ".join(f"{k} {v}" for k, v in sorted(cluster.gate.counts.items()))
    print(f"\n{len(driver.package_requests)} package requests; ministry gate: {gate}", end="")
    print(
        f"\n{len(driver.records)} records, {sum(len(t.requests) for t in driver.records.values())} "
        f"sign requests, {len(driver.bad)} bad inputs, {restarts} daemon restarts "
        f"({cluster.unexpected_exits} on their own), {driver.resends} resends, "
        f"{driver.publish_failures} publish retries, {cluster.now():.0f}s"
    )
    print()
    for check in checks:
        print(check.line())
    print(json.dumps({"size": size, "invariants_hold": all(c.holds for c in checks)}))
    sys.stdout.flush()
