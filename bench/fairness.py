"""Fairness between schools: a burst from one school, then a few requests from another.

Measured twice in one vhost, same daemons, same requests: first with the single queue
(`amqp.sign_shards = 0`, as before), then with the shards (README "Fairness between
schools"). The small school's latency is from its publish to its status event; the
total rate is every request of the run over the time from the first publish to the
last status event. Teacher requests only (the first stage), as in issue #14.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aio_pika

from bench import end_to_end
from bench.environment import BenchEnv, Sample
from daemon import topology
from daemon.stages import Stage
from producers.school_system import sign_request


def _percentile_s(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _shard_of(channel: aio_pika.abc.AbstractChannel, shards: list[str], school: str) -> str:
    """The shard a school's requests land in, found by routing a probe (no daemon runs)."""
    requests = await channel.get_exchange(topology.REQUESTS)
    probe = f"probe-{school}-{time.monotonic_ns()}"
    await requests.publish(aio_pika.Message(b"{}", message_id=probe), routing_key=f"sign.{school}")
    for name in shards:
        queue = await channel.get_queue(name)
        message = await queue.get(fail=False)
        if message is not None and message.message_id == probe:
            await message.ack()
            return name
        if message is not None:
            await message.nack(requeue=True)
    raise RuntimeError(f"the probe of school {school} reached no shard")


async def _two_schools(env: BenchEnv, shards: int) -> tuple[str, str]:
    """A bursting and a small school, on different shards when there are shards."""
    schools = env.dev.schools
    if shards == 0:
        return schools[0], schools[1]
    settings = env.dev.settings.amqp.model_copy(update={"sign_shards": shards})
    async with await aio_pika.connect(env.amqp_url) as connection:
        channel = await connection.channel()
        await topology.declare(channel, settings)
        names = topology.shard_queue_names(settings)
        seen: dict[str, str] = {}
        for school in schools:
            seen[school] = await _shard_of(channel, names, school)
            for other, shard in seen.items():
                if shard != seen[school]:
                    return other, school
    raise RuntimeError("every bench school hashes to one shard; use more schools")


async def _run(
    env: BenchEnv, samples: list[Sample], big: str, small: str, n_big: int, n_small: int, tag: str
) -> dict[str, Any]:
    def request(sample: Sample, school: str, n: int) -> tuple[str, bytes, str]:
        info = sample.info.model_copy(
            update={
                "school_id": school,
                "record_id": f"{sample.info.record_id}-{tag}-{school}-{n}",
                "student_id": f"{sample.info.student_id}-{tag}-{school}-{n}",
            }
        )
        signer = env.dev.signer_for(school, Stage.HOMEROOM_TEACHER.value)
        token = env.dev.consent_signer(school).mint(
            signer, Stage.HOMEROOM_TEACHER, [(info.record_id, sample.sha256)]
        )
        return sign_request(school, info, Stage.HOMEROOM_TEACHER, signer, token, sample.pdf)

    bigs = [request(samples[n % len(samples)], big, n) for n in range(n_big)]
    smalls = [request(samples[n % len(samples)], small, n) for n in range(n_small)]
    published: dict[str, float] = {}
    arrived: dict[str, float] = {}
    done = asyncio.Event()

    async def on_status(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            rid = str(json.loads(message.body)["request_id"])
            if rid in published and rid not in arrived:
                arrived[rid] = time.perf_counter()
                if len(arrived) == n_big + n_small:
                    done.set()

    async with await aio_pika.connect(env.amqp_url) as connection:
        channel = await connection.channel()
        requests = await channel.get_exchange(topology.REQUESTS)
        status = await channel.get_exchange(topology.STATUS)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(status, routing_key="status.#")
        await queue.consume(on_status)
        first = time.perf_counter()
        for key, body, rid in [*bigs, *smalls]:
            published[rid] = time.perf_counter()
            message = aio_pika.Message(
                body,
                content_type="application/json",
                message_id=rid,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await requests.publish(message, routing_key=key)
        await asyncio.wait_for(done.wait(), 3600)
    small_s = [arrived[rid] - published[rid] for _, _, rid in smalls]
    big_s = [arrived[rid] - published[rid] for _, _, rid in bigs]
    total_s = max(arrived.values()) - first
    return {
        "small_school_p50_s": round(_percentile_s(small_s, 0.50), 3),
        "small_school_p99_s": round(_percentile_s(small_s, 0.99), 3),
        "burst_p99_s": round(_percentile_s(big_s, 0.99), 3),
        "total_requests_per_s": round((n_big + n_small) / total_s, 1),
        "total_s": round(total_s, 2),
    }


async def measure(
    env: BenchEnv, samples: list[Sample], n_big: int = 6000, n_small: int = 20, shards: int = 8
) -> dict[str, Any]:
    """Before (one queue) and after (shards), in this order, in one vhost."""
    doc: dict[str, Any] = {"burst": n_big, "small": n_small, "load_before": os.getloadavg()}
    for label, count in (("single_queue", 0), (f"shards_{shards}", shards)):
        big, small = await _two_schools(env, count)
        os.environ["HOCBA_AMQP__SIGN_SHARDS"] = str(count)
        try:
            async with end_to_end.instances(env, 1) as _running:
                doc[label] = await _run(env, samples, big, small, n_big, n_small, label)
        finally:
            os.environ.pop("HOCBA_AMQP__SIGN_SHARDS", None)
    doc["load_after"] = os.getloadavg()
    return doc
