"""Fairness between schools: a burst from one school, then a few requests from another.

Measured in one vhost, same daemon settings, same requests, one variant after the
other: the single queue (`amqp.sign_shards = 0`, as before) and shard settings
(`amqp.sign_shards`, `amqp.sign_shard_prefetch`; README "Fairness between schools").
The small school's latency is from its publish to its status event; the total rate is
every request of the run over the time from the first publish to the last status
event. Teacher requests only (the first stage), as in issue #14. Each variant also
reports where the CPU went (the daemon, its HSM workers, RabbitMQ, PostgreSQL, this
driver), per request.

`python -m bench.fairness [--burst 6000] [--variants 0,8:8,8:16,4]` runs it alone
(`make bench` runs it inside bench/run.py): a variant is SHARDS[:PREFETCH], 0 the
single queue, PREFETCH 0 or left out the daemon's default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika

from bench import end_to_end, procs
from bench.environment import BenchEnv, Sample
from daemon import topology
from daemon.stages import Stage
from producers.school_system import sign_request

# The targets: the small school within 2 s of its own work, the rate within 10%.
SMALL_SCHOOL_MARGIN_S = 2.0
RATE_FLOOR = 0.9
_MAX_SHARDS = 64  # amqp.sign_shards' upper bound


@dataclass(frozen=True)
class Variant:
    shards: int  # 0: the single queue hocba.sign
    prefetch: int = 0  # each shard consumer's; 0: the daemon's default

    @classmethod
    def parse(cls, text: str) -> Variant:
        shards, _, prefetch = text.partition(":")
        return cls(int(shards), int(prefetch or 0))

    @property
    def label(self) -> str:
        if self.shards == 0:
            return "single_queue"
        return f"shards_{self.shards}" + (f"_prefetch_{self.prefetch}" if self.prefetch else "")

    def environ(self) -> dict[str, str]:
        return {
            "HOCBA_AMQP__SIGN_SHARDS": str(self.shards),
            "HOCBA_AMQP__SIGN_SHARD_PREFETCH": str(self.prefetch),
        }


# The single queue, and the shards with the daemon's default prefetch.
DEFAULT_VARIANTS = (Variant(0), Variant(8))


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


async def _reset(env: BenchEnv) -> None:
    """No shards at all: the next variant declares its own (fewer shards than a previous
    variant's would otherwise leave the extra ones bound and unconsumed)."""
    async with await aio_pika.connect(env.amqp_url) as connection:
        channel = await connection.channel()
        await channel.exchange_delete(topology.SIGN_SHARDS)
        for n in range(_MAX_SHARDS):
            await channel.queue_delete(topology.SIGN_SHARD_QUEUE.format(n))


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
    raise RuntimeError(f"every bench school hashes to one of {shards} shards; use more schools")


def _requests(
    env: BenchEnv, samples: list[Sample], school: str, n: int, tag: str
) -> list[tuple[str, bytes, str]]:
    """`n` teacher requests of `school`, each a record of its own."""
    out = []
    signer = env.dev.signer_for(school, Stage.HOMEROOM_TEACHER.value)
    consent = env.dev.consent_signer(school)
    for k in range(n):
        sample = samples[k % len(samples)]
        info = sample.info.model_copy(
            update={
                "school_id": school,
                "record_id": f"{sample.info.record_id}-{tag}-{school}-{k}",
                # At most 32 characters (daemon/messages.py), unique per run and school.
                "student_id": f"{school}-{tag}-{k:05d}"[-32:],
            }
        )
        token = consent.mint(signer, Stage.HOMEROOM_TEACHER, [(info.record_id, sample.sha256)])
        out.append(sign_request(school, info, Stage.HOMEROOM_TEACHER, signer, token, sample.pdf))
    return out


async def _drive(env: BenchEnv, bigs: list[Any], smalls: list[Any]) -> dict[str, Any]:
    """Publish the burst, then the small school's; wait for every status event."""
    published: dict[str, float] = {}
    arrived: dict[str, float] = {}
    states: dict[str, int] = {}
    total = len(bigs) + len(smalls)
    done = asyncio.Event()

    async def on_status(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = json.loads(message.body)
            rid = str(event["request_id"])
            if rid in published and rid not in arrived:
                arrived[rid] = time.perf_counter()
                reason = event.get("reason") or {}
                state = ":".join(filter(None, (event["state"], reason.get("code"))))
                states[state] = states.get(state, 0) + 1
                if len(arrived) == total:
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
        "burst_p99_s": round(_percentile_s(big_s, 0.99), 3) if big_s else 0.0,
        "total_requests_per_s": round(total / total_s, 1),
        "total_s": round(total_s, 2),
        "states": states,
    }


def _listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1 or any address at `port` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    return int(entry.name)
    return None


def _services_cpu_s(db_name: str) -> dict[str, float]:
    """The CPU of the broker and database this bench uses, not of others' on this machine:
    the RabbitMQ node on 5672 (shared by every vhost), this database's PostgreSQL
    backends, and the cluster's own processes (WAL writer, checkpointer: shared)."""
    out = {"rabbitmq": 0.0, "postgresql_backends": 0.0, "postgresql_cluster": 0.0}
    broker = _listener_pid(5672)
    if broker is not None:
        out["rabbitmq"] = sum(procs.cpu_seconds(p) for p in procs.tree(broker))
    postmaster = _listener_pid(5432)
    for pid in procs.tree(postmaster) if postmaster is not None else []:
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if f" {db_name} " in title:
                out["postgresql_backends"] += procs.cpu_seconds(pid)
            elif "postgres: " in title and " postgres " not in title:
                out["postgresql_cluster"] += procs.cpu_seconds(pid)
    return out


def _other_benches() -> list[str]:
    """Other bench, soak or test runs on this machine now (they share its two cores)."""
    found, mine = [], set(procs.tree(os.getpid()))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in mine:
            with contextlib.suppress(OSError):
                args = (entry / "cmdline").read_bytes().split(b"\0")
                text = " ".join(a.decode(errors="replace") for a in args[:4])
                if any(w in text for w in ("-m bench.", "tests.chaos", "pytest")):
                    found.append(text[:80])
    return sorted(found)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measured(
    env: BenchEnv, daemon_pid: int, bigs: list[Any], smalls: list[Any]
) -> dict[str, Any]:
    """One run, with the CPU each process spent on it, per request (CPU-ms)."""
    before = procs.TreeSample.of(daemon_pid)
    others = _other_benches()
    busy, services, own = procs.machine_busy_s(), _services_cpu_s(env.db_name), _own_cpu_s()
    figures = await _drive(env, bigs, smalls)
    after = procs.TreeSample.of(daemon_pid)
    busy = procs.machine_busy_s() - busy
    services = {k: v - services[k] for k, v in _services_cpu_s(env.db_name).items()}
    own = _own_cpu_s() - own
    main = after.cpu_s.get(daemon_pid, 0.0) - before.cpu_s.get(daemon_pid, 0.0)
    workers = procs.cpu_between(before, after) - main
    n = len(bigs) + len(smalls)
    spent = {"daemon_main": main, "daemon_hsm_workers": workers, **services, "driver": own}
    figures["cpu_ms_per_request"] = {k: round(1000 * v / n, 2) for k, v in spent.items()}
    figures["machine_cpu_ms_per_request"] = round(1000 * busy / n, 2)
    figures["machine_cpu_utilisation"] = round(
        busy / ((os.cpu_count() or 1) * figures["total_s"]), 2
    )
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    figures["others_running"] = others
    return figures


async def _variant(
    env: BenchEnv, samples: list[Sample], variant: Variant, n_big: int, n_small: int, tag: str
) -> dict[str, Any]:
    await _reset(env)
    big, small = await _two_schools(env, variant.shards)
    bigs = await asyncio.to_thread(_requests, env, samples, big, n_big, tag)
    smalls = await asyncio.to_thread(_requests, env, samples, small, n_small, tag)
    alone = await asyncio.to_thread(_requests, env, samples, small, n_small, f"{tag}-alone")
    saved = {k: os.environ.get(k) for k in variant.environ()}
    os.environ.update(variant.environ())
    try:
        async with end_to_end.instances(env, 1) as running:
            pid = running[0].process.pid
            # The small school's own work: its requests with nothing ahead of them.
            own = await _drive(env, [], alone)
            figures = {
                "shards": variant.shards,
                "shard_prefetch": variant.prefetch or "default",
                "small_school_alone_p99_s": own["small_school_p99_s"],
                **await _measured(env, pid, bigs, smalls),
            }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return figures


async def _started_once_more(
    env: BenchEnv, samples: list[Sample], variant: Variant, n_big: int, n_small: int, tag: str
) -> dict[str, Any]:
    """The variant; once more if its daemon was not ready in time (a busy machine)."""
    try:
        return await _variant(env, samples, variant, n_big, n_small, tag)
    except RuntimeError as exc:
        if "was not ready" not in str(exc):
            raise
        print(f"bench: fairness {variant.label}: {exc}; once more", file=sys.stderr, flush=True)
        return await _variant(env, samples, variant, n_big, n_small, f"{tag}r")


async def measure(
    env: BenchEnv,
    samples: list[Sample],
    n_big: int = 6000,
    n_small: int = 20,
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS,
) -> dict[str, Any]:
    """Each variant in the order given, in one vhost; the first is the baseline."""
    doc: dict[str, Any] = {
        "burst": n_big,
        "small": n_small,
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    baseline: float | None = None
    for n, variant in enumerate(variants):
        label = variant.label
        while label in doc:
            label += "_again"
        try:
            figures = await _started_once_more(env, samples, variant, n_big, n_small, f"f{n}")
        except RuntimeError as exc:  # e.g. the bench's schools share one shard
            doc[label] = {"error": str(exc)}
            print(f"bench: fairness {label}: {exc}", file=sys.stderr, flush=True)
            continue
        rate = figures["total_requests_per_s"]
        baseline = baseline or rate
        figures["rate_vs_first"] = round(rate / baseline, 3)
        figures["meets_targets"] = (
            figures["small_school_p99_s"]
            <= SMALL_SCHOOL_MARGIN_S + figures["small_school_alone_p99_s"]
            and rate >= RATE_FLOOR * baseline
        )
        doc[label] = figures
        print(f"bench: fairness {label}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    await _reset(env)
    doc["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return doc


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from bench import pki_server
    from bench.environment import bench_env, samples

    async with bench_env(schools=args.schools) as env, pki_server.started(env.dev.base / "pki"):
        records = await asyncio.to_thread(samples, env.dev.schools, args.samples, env.tag)
        variants = tuple(Variant.parse(v) for v in args.variants.split(","))
        return await measure(env, records, args.burst, args.small, variants)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    parser.add_argument("--burst", type=int, default=6000, help="the big school's requests")
    parser.add_argument("--small", type=int, default=20, help="the small school's requests")
    parser.add_argument("--variants", default="0,8", help="SHARDS[:PREFETCH],…; first: baseline")
    parser.add_argument("--schools", type=int, default=2, help="bench schools to pick two from")
    parser.add_argument("--samples", type=int, default=40, help="distinct PDFs cycled through")
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    doc = asyncio.run(_main(args))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
