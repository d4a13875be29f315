"""The composition root: open everything in dependency order, close it in reverse.

`run` is the daemon's whole life: it returns when `stop` is set (SIGTERM/SIGINT),
after the consumer stopped, in-flight requests finished (or the timeout passed) and
every resource closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import aiohttp
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from consumers.package_requests import PackageRequestConsumer
from consumers.rosters import RosterConsumer
from consumers.sign_requests import SignRequestConsumer
from daemon import amqp, blobs, http, memdebug, metrics, monitor, systemd_notify, topology
from daemon.audit.anchors import AuditKeeper
from daemon.clock import vietnam_now
from daemon.database import Database
from daemon.documents import DocumentSource, RenderPool
from daemon.errors import BrokerUnavailable
from daemon.hsm import SigningPool
from daemon.ltv.levels import leveled_signing
from daemon.ltv.renewal import renewer
from daemon.ltv.timestamps import TsaClient
from daemon.packaging.builder import Packager
from daemon.packaging.runner import PackageRunner
from daemon.packaging.submission import Submitter
from daemon.pdf.validation import load_certificates
from daemon.pipeline import Pipeline
from daemon.registry.rosters import RosterStore
from daemon.settings import Settings
from producers.ministry import MinistryClient
from producers.status import StatusRelay
from producers.transports import AmqpStatus, MqttStatus

log = logging.getLogger(__name__)

WATCHDOG_S = 10.0


@dataclass(frozen=True)
class Running:
    """What a started daemon exposes to its caller (the CLI, tests, the demo)."""

    db: Database
    consumer: SignRequestConsumer
    relay: StatusRelay
    http_port: int
    monitor: monitor.Monitor
    packages: PackageRunner


async def run(settings: Settings, stop: asyncio.Event) -> None:
    async with started(settings, stop):
        await stop.wait()
        log.info("Stopping.")


@contextlib.asynccontextmanager
async def started(settings: Settings, stop: asyncio.Event) -> AsyncIterator[Running]:
    metrics.set_build_info()
    async with contextlib.AsyncExitStack() as stack:
        _start_watchdog(stack)
        memdebug.start(stack, settings.memory.trim_interval_s)
        db, pool = await open_core(stack, settings)

        client = await stack.enter_async_context(aiohttp.ClientSession())
        renderer = RenderPool(settings.signing.render_workers)
        stack.push_async_callback(renderer.close)
        documents = DocumentSource(client, settings.signing, renderer)
        store = await blobs.open_store(settings.store, stack)
        signing = leveled_signing(settings.signing, db, pool, client)
        pipeline = Pipeline(db, signing, store, documents)
        package_runner = _package_runner(settings, db, pool, client, store)
        stack.push_async_callback(package_runner.close)

        connection = await _connect(settings)
        stack.push_async_callback(connection.close)
        with amqp.translated("declaring the topology"):
            consume_channel = await connection.channel(on_return_raises=True)
            await consume_channel.set_qos(prefetch_count=settings.amqp.prefetch)
            # The sign shards' own channel, a prefetch per shard consumer (quorum queues
            # refuse a channel-wide one): README "Fairness between schools".
            shard_channel = await connection.channel(on_return_raises=True)
            await shard_channel.set_qos(prefetch_count=_shard_prefetch(settings))
            topo = await topology.declare(consume_channel, settings.amqp, shard_channel)
            status_channel = await connection.channel()
            status_exchange = await status_channel.get_exchange(topology.STATUS)

        mqtt = MqttStatus(settings.mqtt)
        stack.push_async_callback(mqtt.close)
        relay = StatusRelay(
            db, [AmqpStatus(status_exchange), mqtt], gather_s=settings.status.gather_ms / 1000
        )
        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(relay_stop), name="outbox-relay")
        stack.push_async_callback(_finish, relay_task, relay_stop)

        consumer = SignRequestConsumer(
            topo, pipeline, settings.amqp, settings.instance, concurrency=_handlers(settings)
        )
        watchdog_task = asyncio.create_task(
            _watch_consumer(connection, consumer, stop), name="consumer-watchdog"
        )
        stack.push_async_callback(_finish, watchdog_task, None)

        checks: dict[str, http.Check] = {
            "broker": lambda: _broker_check(connection),
            "consuming": lambda: _consuming_check(consumer),
            "database": db.ping,
            "hsm": pool.ping,
        }
        metrics.HSM_SESSIONS.set(settings.hsm.workers)
        queues = monitor.AmqpQueues(connection, monitor.queue_names(settings.amqp))
        watcher = monitor.Monitor(db, queues, checks, settings.packaging.deadlines)
        watcher_stop = asyncio.Event()
        watcher_task = asyncio.create_task(watcher.run(watcher_stop), name="monitor")
        stack.push_async_callback(_finish, watcher_task, watcher_stop)

        runner = await http.serve(http.build(checks), settings.http.host, settings.http.port)
        stack.push_async_callback(runner.cleanup)
        port = runner.addresses[0][1] if runner.addresses else settings.http.port

        await consumer.start()
        stack.push_async_callback(consumer.stop, settings.shutdown_timeout_s)
        package_consumer = PackageRequestConsumer(
            topo, package_runner, settings.amqp, settings.instance
        )
        await package_consumer.start()
        stack.push_async_callback(package_consumer.stop)
        roster_consumer = RosterConsumer(topo, RosterStore(db), settings.amqp, settings.instance)
        await roster_consumer.start()
        stack.push_async_callback(roster_consumer.stop)
        schedule_stop = asyncio.Event()
        schedule_task = asyncio.create_task(
            package_runner.run_schedule(schedule_stop), name="packaging-schedule"
        )
        stack.push_async_callback(_finish, schedule_task, schedule_stop)
        renewals = renewer(db, store, client, settings.signing, settings.ltv)
        if renewals is not None:  # daily at ltv.renew_at; one instance at a time renews
            renew_stop = asyncio.Event()
            renew_task = asyncio.create_task(renewals.run_schedule(renew_stop), name="ltv-renewal")
            stack.push_async_callback(_finish, renew_task, renew_stop)
        keeper = _audit_keeper(settings, db, store, client)  # anchors and verifies the trail
        audit_stop = asyncio.Event()
        audit_task = asyncio.create_task(keeper.run(audit_stop), name="audit-keeper")
        stack.push_async_callback(_finish, audit_task, audit_stop)
        log.info("Ready: consuming, HTTP on %s:%s.", settings.http.host, port)
        systemd_notify.notify(f"{systemd_notify.READY}\nSTATUS=Consuming; HTTP on port {port}.")
        stack.callback(systemd_notify.notify, systemd_notify.STOPPING)
        yield Running(db, consumer, relay, port, watcher, package_runner)


def _package_runner(
    settings: Settings,
    db: Database,
    pool: SigningPool,
    client: aiohttp.ClientSession,
    store: blobs.BlobStore,
) -> PackageRunner:
    packager = Packager(db, pool, store)
    ministry = MinistryClient(client, settings.ministry, store)
    submitter = Submitter(db, ministry, settings.ministry, store)
    return PackageRunner(db, packager, submitter, settings.packaging)


def _audit_keeper(
    settings: Settings, db: Database, store: blobs.BlobStore, client: aiohttp.ClientSession
) -> AuditKeeper:
    tsa = TsaClient(client, settings.signing) if settings.signing.tsa_url else None
    roots = load_certificates(settings.signing.trust_roots)
    deadlines = settings.packaging.deadlines
    return AuditKeeper(
        db, tsa, store, roots, settings.audit, deadlines, vietnam_now, settings.instance
    )


async def open_core(
    stack: contextlib.AsyncExitStack, settings: Settings
) -> tuple[Database, SigningPool]:
    """The database pool and the HSM pool, which every entry point needs; `stack` closes them."""
    db = Database(settings.database)
    await db.open()
    stack.push_async_callback(db.close)
    pool = SigningPool(settings.hsm, settings.signing)
    await pool.start()
    stack.push_async_callback(pool.close)
    return db, pool


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`; nothing polls for them."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def _start_watchdog(stack: contextlib.AsyncExitStack) -> None:
    """Ping systemd's watchdog from start to the very end, shutdown included."""
    interval_s = systemd_notify.watchdog_interval_s()
    if interval_s is None:
        return
    stop = asyncio.Event()
    task = asyncio.create_task(systemd_notify.watchdog(stop, interval_s), name="systemd-watchdog")
    stack.push_async_callback(_finish, task, stop)


async def _connect(settings: Settings) -> AbstractRobustConnection:
    password = settings.amqp.resolved_password()
    url = URL(settings.amqp.url)
    if password is not None:
        url = url.with_password(password.get_secret_value())
    with amqp.translated("connecting"):
        return await aio_pika.connect_robust(
            url, client_properties={"connection_name": settings.instance}
        )


async def _broker_check(connection: AbstractRobustConnection) -> None:
    if connection.is_closed or not connection.connected.is_set():
        raise BrokerUnavailable("not connected")


async def _consuming_check(consumer: SignRequestConsumer) -> None:
    if not await consumer.consuming():
        raise BrokerUnavailable("not consuming")


async def _watch_consumer(
    connection: AbstractRobustConnection,
    consumer: SignRequestConsumer,
    stop: asyncio.Event,
) -> None:
    """Repair a consumer the broker cancelled (e.g. the queue's leader moved); the robust
    connection restores consumers after a reconnect, this catches what it cannot."""
    suspect = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCHDOG_S)
        if stop.is_set() or not connection.connected.is_set() or await consumer.consuming():
            suspect = False
            continue
        if not suspect:
            # A connection that just came back may still be restoring its consumers:
            # only a consumer missing on two checks in a row is repaired.
            suspect = True
            continue
        suspect = False
        try:
            log.warning("This instance no longer consumes the sign queue; consuming again.")
            await consumer.repair()
        except BrokerUnavailable:
            log.info("Consumer repair deferred: the broker connection is recovering.")


async def _finish(task: asyncio.Task[None], stop: asyncio.Event | None) -> None:
    if stop is not None:
        stop.set()
    else:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _shard_prefetch(settings: Settings) -> int:
    """Each shard consumer's: amqp.sign_shard_prefetch, else twice the handlers, so a
    handler that finishes finds the next delivery already here."""
    return settings.amqp.sign_shard_prefetch or 2 * _handlers(settings)


def _handlers(settings: Settings) -> int:
    """Requests worked on at once: enough to keep every HSM worker busy while others
    fetch, decide and store (4 per worker), never more than the prefetch."""
    return min(settings.amqp.prefetch, max(8, 4 * settings.hsm.workers))
