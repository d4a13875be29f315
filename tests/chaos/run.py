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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from daemon.stages import Stage
from producers.school_system import sample_pdf, sample_record, sign_request
from tests.chaos import invariants
from tests.chaos.cluster import (
    ROUND,
    SIZES,
    YEAR,
    Cluster,
    Size,
    start_cluster,
    stop_cluster,
    wait_until,
)
from tests.chaos.driver import Driver, MqttRecorder

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
