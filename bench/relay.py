"""`python -m bench.relay`: what relaying one status event costs the relaying instance.

`bench.paired` shows the instance that relays every status event (the outbox's
leader) spending ~0.4-0.5 ms more CPU per event than the other. This measures the
relay alone, in this process, on the real PostgreSQL, RabbitMQ (confirmed) and
Mosquitto (QoS 1): `--events` signed-record events are stored `--pass` at a time (as
the pipeline's batches commit them) and each lot is drained by `StatusRelay.drain`,
the leader's pass, with this process's CPU (user and kernel, every thread) counted
around the passes only. Pass sizes side by side, in turns, in one run: one JSON
document on stdout, the CPU per event and per pass of each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika

from bench.environment import bench_env
from daemon import records, topology
from daemon.database import Database
from daemon.messages import StatusEvent
from daemon.stages import Stage
from producers.status import StatusRelay
from producers.transports import AmqpStatus, MqttStatus


def _cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def _event(school: str, n: int) -> StatusEvent:
    stage = (Stage.HOMEROOM_TEACHER, Stage.PRINCIPAL, Stage.SCHOOL_SEAL)[n % 3]
    return StatusEvent(
        event_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        school_id=school,
        record_id=f"relay-{n // 3:06d}",
        state=stage.state,
        stage=stage,
        document_sha256="ab" * 32,
        signatures=stage.position,
        reason=None,
        at=datetime.now(UTC),
    )


async def _lot(db: Database, school: str, size: int, first: int) -> None:
    """`size` events stored as one batch of the pipeline stores them: one transaction."""
    async with db.transaction() as conn:
        for n in range(first, first + size):
            await records.enqueue(conn, _event(school, n))


async def compare(events: int, passes: list[int], rounds: int) -> dict[str, Any]:
    async with bench_env(schools=1) as env, contextlib.AsyncExitStack() as stack:
        settings, school = env.dev.settings, env.dev.schools[0]
        settings = settings.model_copy(
            update={"mqtt": settings.mqtt.model_copy(update={"topic_prefix": env.mqtt_prefix})}
        )
        db = Database(settings.database)
        await db.open()
        stack.push_async_callback(db.close)
        connection = await aio_pika.connect_robust(settings.amqp.url)
        stack.push_async_callback(connection.close)
        channel = await connection.channel()
        await topology.declare(channel, settings.amqp, await connection.channel())
        exchange = await (await connection.channel()).get_exchange(topology.STATUS)
        # A school system's queue, so that no event comes back unroutable (mandatory);
        # the broker drops what it holds beyond one, so no consumer costs this process.
        sink = await channel.declare_queue(exclusive=True, arguments={"x-max-length": 1})
        await sink.bind(topology.STATUS, routing_key=f"status.{school}.#")
        mqtt = MqttStatus(settings.mqtt)
        stack.push_async_callback(mqtt.close)
        relay = StatusRelay(db, [AmqpStatus(exchange), mqtt])
        async with db.connection() as conn:
            await relay.drain(conn)  # whatever the set-up left; connects MQTT
        runs: dict[str, list[dict[str, float]]] = {str(p): [] for p in passes}
        stored = 0
        for _ in range(rounds):
            for size in passes:
                spent = kernel = 0.0
                for _ in range(events // size):
                    await _lot(db, school, size, stored)
                    stored += size
                    async with db.connection() as conn:
                        cpu, system = _cpu_s()
                        await relay.drain(conn)
                        after, after_system = _cpu_s()
                    spent, kernel = spent + after - cpu, kernel + after_system - system
                done = size * (events // size)
                runs[str(size)].append(
                    {
                        "cpu_ms_per_event": round(1000 * spent / done, 4),
                        "kernel_ms_per_event": round(1000 * kernel / done, 4),
                    }
                )
        summary = {
            size: {
                key: round(statistics.fmean(r[key] for r in each), 4)
                for key in ("cpu_ms_per_event", "kernel_ms_per_event")
            }
            for size, each in runs.items()
        }
        return {"events": events, "rounds": rounds, "by_pass_size": runs, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("--events", type=int, default=960)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pass", dest="passes", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(compare(args.events, args.passes, args.rounds)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
