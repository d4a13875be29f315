"""The real daemon(s) against the real RabbitMQ, PostgreSQL and Mosquitto.

Instances are separate `hocba-signer run` processes (so each one's CPU and peak RSS
can be read); a driver publishes each record's first stage as the school system
would, follows the status events and publishes the next stage when one arrives,
and measures from the first publish to the last status event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from bench import procs
from bench.environment import BenchEnv, Sample
from daemon import topology
from daemon.blobs import FsStore
from daemon.messages import RecordInfo
from daemon.stages import Stage, State
from producers.school_system import sign_request

_NEXT = {State.SIGNED_BY_TEACHER: Stage.PRINCIPAL, State.SIGNED_BY_PRINCIPAL: Stage.SCHOOL_SEAL}
READY_TIMEOUT_S = 90.0


@dataclass
class Instance:
    name: str
    process: asyncio.subprocess.Process
    http_port: int
    log: Path
    store_path: Path  # its fs blob store (HOCBA_STORE__PATH in extra_env, or the config's)
    workers: int  # its HSM worker processes


def _one_or_each(values: list[int]) -> int | list[int] | None:
    """The instances' common value, or each one's where they differ (`bench.paired`)."""
    return values[0] if len(set(values)) == 1 else (values or None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def instances(
    env: BenchEnv,
    count: int,
    level: str = "B-B",
    extra_env: dict[str, str] | None = None,
    first: int = 0,
    workers: int | None = None,
) -> AsyncIterator[list[Instance]]:
    """`count` daemons signing at `level`, consuming the same queue; SIGTERM afterwards.

    `extra_env`: settings for these instances only (`HOCBA_AMQP__BATCH_SIZE`, …);
    `first`: the number of the first one's name, beside instances already running;
    `workers`: each one's HSM worker processes (`hsm.workers`; None: the config's).
    """
    exe = Path(sys.executable).parent / "hocba-signer"
    started: list[Instance] = []
    try:
        for n in range(first, first + count):
            name, port = f"bench-{env.tag}-{n}", _free_port()
            log = env.dev.base / f"{name}.log"
            child_env = {
                **os.environ,
                "HOCBA_INSTANCE": name,
                "HOCBA_HTTP__PORT": str(port),
                "HOCBA_MQTT__TOPIC_PREFIX": env.mqtt_prefix,
                "HOCBA_MQTT__CLIENT_ID_PREFIX": name,
                "HOCBA_SIGNING__LEVEL": level,
                **({"HOCBA_HSM__WORKERS": str(workers)} if workers is not None else {}),
                **(extra_env or {}),
            }
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    str(exe),
                    "--config",
                    str(env.dev.config_path),
                    "run",
                    env=child_env,
                    stdout=out,
                    stderr=out,
                )
            store_path = Path(child_env.get("HOCBA_STORE__PATH", env.dev.settings.store.path))
            pool = int(child_env.get("HOCBA_HSM__WORKERS", env.dev.settings.hsm.workers))
            started.append(Instance(name, process, port, log, store_path, pool))
        await asyncio.gather(*(_ready(i) for i in started))
        yield started
    finally:
        for instance in started:
            if instance.process.returncode is None:
                instance.process.send_signal(signal.SIGTERM)
        for instance in started:
            try:
                await asyncio.wait_for(instance.process.wait(), 60)
            except TimeoutError:
                instance.process.kill()
                await instance.process.wait()


async def _ready(instance: Instance) -> None:
    """Wait until /readyz answers 200 (a harness may poll; the daemon does not)."""
    url = f"http://127.0.0.1:{instance.http_port}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if instance.process.returncode is not None:
                tail = instance.log.read_text(errors="replace").splitlines()[-20:]
                raise RuntimeError(f"{instance.name} exited:\n" + "\n".join(tail))
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{instance.name} was not ready in {READY_TIMEOUT_S}s; see {instance.log}")


# Requests the daemons made to the TSA and the status responders: the _count series.
_CALLS = {
    "tsa": "hocba_tsa_request_duration_seconds_count",
    "ocsp": 'hocba_certificate_status_request_duration_seconds_count{source="ocsp"}',
    "crl": 'hocba_certificate_status_request_duration_seconds_count{source="crl"}',
}


async def _calls(running: list[Instance]) -> dict[str, float]:
    """TSA, OCSP and CRL requests so far, all instances, read from their /metrics."""
    totals = dict.fromkeys(_CALLS, 0.0)
    async with aiohttp.ClientSession() as http:
        for instance in running:
            url = f"http://127.0.0.1:{instance.http_port}/metrics"
            async with http.get(url) as response:
                text = await response.text()
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                for kind, series in _CALLS.items():
                    if name == series or (kind == "tsa" and name.startswith(series + "{")):
                        totals[kind] += float(value)
    return totals


@dataclass
class _Flight:
    info: RecordInfo
    request_id: str
    published_at: float
    record_started_at: float


@dataclass
class Driver:
    """Publishes first stages (all at once, or paced) and follows each record to its seal."""

    env: BenchEnv
    records: list[Sample]
    run_tag: str
    request_latency_s: list[float] = field(default_factory=list)
    record_latency_s: list[float] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    first_publish: float = 0.0
    last_event: float = 0.0
    _flights: dict[tuple[str, str], _Flight] = field(default_factory=dict)
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _exchange: aio_pika.abc.AbstractExchange | None = None

    async def run(self, rate_per_s: float | None, timeout_s: float) -> None:
        connection = await aio_pika.connect_robust(self.env.amqp_url)
        async with connection:
            channel = await connection.channel()
            self._exchange = await channel.get_exchange(topology.REQUESTS)
            status = await channel.get_exchange(topology.STATUS)
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            for school in self.env.dev.schools:
                await queue.bind(status, routing_key=f"status.{school}.#")
            await queue.consume(self._on_status)
            firsts = [self._first(sample) for sample in self.records]
            self.first_publish = time.perf_counter()
            for n, (school, info, body, rid) in enumerate(firsts):
                if rate_per_s:
                    delay = self.first_publish + n / rate_per_s - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self._publish(school, info, body, rid, new_record=True)
            await asyncio.wait_for(self._done.wait(), timeout_s)

    def _first(self, sample: Sample) -> tuple[str, RecordInfo, bytes, str]:
        # A student has one live record per year and round: each run has its own students.
        info = sample.info.model_copy(
            update={
                "record_id": f"{sample.info.record_id}-{self.run_tag}",
                "student_id": f"{sample.info.student_id}-{self.run_tag}",
            }
        )
        stage = Stage.HOMEROOM_TEACHER
        _, body, rid = self._request(sample.school, info, stage, sample.sha256, sample.pdf)
        return sample.school, info, body, rid

    def _request(
        self, school: str, info: RecordInfo, stage: Stage, digest: str, pdf: bytes | None = None
    ) -> tuple[str, bytes, str]:
        signer = self.env.dev.signer_for(school, stage.value)
        token = self.env.dev.consent_signer(school).mint(signer, stage, [(info.record_id, digest)])
        return sign_request(school, info, stage, signer, token, pdf)

    async def _publish(
        self,
        school: str,
        info: RecordInfo,
        body: bytes,
        rid: str,
        *,
        new_record: bool = False,
        started: float = 0.0,
    ) -> None:
        assert self._exchange is not None
        now = time.perf_counter()
        self._flights[(school, info.record_id)] = _Flight(
            info, rid, now, now if new_record else started
        )
        message = aio_pika.Message(
            body,
            content_type="application/json",
            message_id=rid,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._exchange.publish(message, routing_key=f"sign.{school}")

    async def _on_status(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            arrived = time.perf_counter()
            event = json.loads(message.body)
            key = (event["school_id"], event.get("record_id"))
            flight = self._flights.get(key)
            if flight is None or flight.request_id != event["request_id"]:
                return  # a repeated event, or another run's
            del self._flights[key]
            self.request_latency_s.append(arrived - flight.published_at)
            self.last_event = arrived
            state = State(event["state"])
            if state in _NEXT:
                _, body, rid = self._request(
                    key[0], flight.info, _NEXT[state], event["document_sha256"]
                )
                await self._publish(
                    key[0], flight.info, body, rid, started=flight.record_started_at
                )
                return
            if state is State.ISSUED:
                self.issued.append(event["document_sha256"])
                self.record_latency_s.append(arrived - flight.record_started_at)
            else:
                code = (event.get("reason") or {}).get("code", "unknown")
                self.rejected[code] = self.rejected.get(code, 0) + 1
            if len(self.issued) + sum(self.rejected.values()) >= len(self.records):
                self._done.set()


def _own_cpu_s() -> float:
    """CPU seconds of this process (the driver), all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(1000 * cuts[49], 1),
        "p95": round(1000 * cuts[94], 1),
        "p99": round(1000 * cuts[98], 1),
    }


async def measure(
    env: BenchEnv,
    running: list[Instance],
    records: list[Sample],
    run_tag: str,
    rate_per_s: float | None = None,
    timeout_s: float = 900,
    level: str = "B-B",
    pki_pid: int | None = None,
) -> tuple[dict[str, Any], list[bytes]]:
    """One run against already started instances; figures and the issued PDFs.

    `pki_pid`: the dev TSA and OCSP process, whose CPU is counted with the services'.
    """
    before = [procs.TreeSample.of(i.process.pid) for i in running]
    calls = await _calls(running)
    pki = procs.TreeSample.of(pki_pid) if pki_pid else None
    busy, services, own = procs.machine_busy_s(), procs.services_cpu_s(), _own_cpu_s()
    driver = Driver(env, records, run_tag)
    await driver.run(rate_per_s, timeout_s)
    busy = procs.machine_busy_s() - busy
    services = {k: v - services[k] for k, v in procs.services_cpu_s().items()}
    own = _own_cpu_s() - own
    after = [procs.TreeSample.of(i.process.pid) for i in running]
    if pki is not None and pki_pid:
        services["dev_tsa_and_ocsp"] = procs.cpu_between(pki, procs.TreeSample.of(pki_pid))
    calls = {k: v - calls[k] for k, v in (await _calls(running)).items()}
    wall = driver.last_event - driver.first_publish
    signatures = 3 * len(driver.issued)
    sampled = list(zip(running, before, after, strict=True))
    cpu = sum(procs.cpu_between(b, a) for _, b, a in sampled)
    main_cpu = sum(procs.cpu_between(b, a, pid=i.process.pid) for i, b, a in sampled)
    system = sum(procs.cpu_between(b, a, system=True) for _, b, a in sampled)
    main_system = sum(
        procs.cpu_between(b, a, system=True, pid=i.process.pid) for i, b, a in sampled
    )
    store = FsStore(running[0].store_path if running else env.dev.settings.store.path)
    issued = [await store.get(digest) for digest in driver.issued]
    figures: dict[str, Any] = {
        "level": level,
        "instances": len(running),
        "workers_per_instance": _one_or_each([i.workers for i in running]),
        "prefetch": env.dev.settings.amqp.prefetch,
        "records": len(records),
        "issued": len(driver.issued),
        "rejected": driver.rejected,
        "paced_records_per_s": round(rate_per_s, 1) if rate_per_s else None,
        "elapsed_s": round(wall, 3),
        "records_per_s": round(len(driver.issued) / wall, 2),
        "signatures_per_s": round(signatures / wall, 1),
        "latency_ms": _percentiles_ms(driver.request_latency_s),
        # What each issued record cost the TSA and the status responders (the rest came
        # from the shared status cache).
        "calls_per_record": {k: round(v / max(len(driver.issued), 1), 2) for k, v in calls.items()},
        "record_latency_ms": _percentiles_ms(driver.record_latency_s),
        "cpu_s_per_signature": round(cpu / max(signatures, 1), 5),
        "machine_cpu_s_per_signature": round(busy / max(signatures, 1), 5),
        # 1.0 = every core busy for the whole run: CPU, not the HSM, is the limit.
        "machine_cpu_utilisation": round(busy / ((os.cpu_count() or 1) * wall), 2),
        # Where the machine's CPU went, per signature: the daemons, the services they
        # use, and this driver (the school system's side: consents, requests).
        "cpu_s_per_signature_by_process": {
            "daemons_main": round(main_cpu / max(signatures, 1), 5),
            "daemons_hsm_workers": round((cpu - main_cpu) / max(signatures, 1), 5),
            **{k: round(v / max(signatures, 1), 5) for k, v in services.items()},
            "driver": round(own / max(signatures, 1), 5),
        },
        # The kernel's part of the daemons' (writes and fsyncs of the blob store, sockets).
        "system_cpu_s_per_signature_by_process": {
            "daemons_main": round(main_system / max(signatures, 1), 5),
            "daemons_hsm_workers": round((system - main_system) / max(signatures, 1), 5),
        },
        "peak_rss_mb_per_instance": [
            {
                "main": round(a.peak_rss_mb[i.process.pid], 1),
                "with_hsm_workers": round(sum(a.peak_rss_mb.values()), 1),
                # RSS counts shared pages once per process; PSS shares them out.
                "pss_now_with_hsm_workers": round(sum(a.pss_mb.values()), 1),
            }
            for i, a in zip(running, after, strict=True)
        ],
    }
    return figures, issued
