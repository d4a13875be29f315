"""The daemon's own signing path, in-process: SigningPool workers on both cores."""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from typing import Any

from bench import procs
from bench.environment import BenchEnv, Sample
from bench.report import signing_rates
from daemon.hsm import SigningPool, SignJob
from daemon.stages import ORDER

Timings = dict[str, list[tuple[float, float]]]  # stage -> (worker s, HSM s) per signature


async def _record(
    pool: SigningPool, env: BenchEnv, sample: Sample, timings: Timings | None = None
) -> list[bytes]:
    pdf, versions = sample.pdf, []
    for stage in ORDER:
        result = await pool.sign(SignJob(pdf, stage, env.key(sample.school, stage)))
        pdf = result.pdf
        versions.append(pdf)
        if timings is not None:
            timings.setdefault(stage.value, []).append((result.worker_seconds, result.hsm_seconds))
    return versions


async def _batch(pool: SigningPool, env: BenchEnv, samples: list[Sample]) -> list[list[bytes]]:
    """A batch of records through three stages as the daemon signs them: one
    `sign_many` a stage for the whole batch."""
    pdfs = [s.pdf for s in samples]
    versions: list[list[bytes]] = [[] for _ in samples]
    for stage in ORDER:
        keys = [env.key(s.school, stage) for s in samples]
        jobs = [SignJob(pdf, stage, key) for pdf, key in zip(pdfs, keys, strict=True)]
        results = await pool.sign_many(jobs)
        for n, result in enumerate(results):
            if isinstance(result, Exception):
                raise result
            pdfs[n] = result.pdf
            versions[n].append(result.pdf)
    return versions


def _per_stage(timings: Timings) -> dict[str, dict[str, float]]:
    """Median milliseconds per signature in a worker, by stage: all, HSM, the rest."""
    out = {}
    for stage, pairs in timings.items():
        worker = statistics.median(w for w, _ in pairs)
        hsm = statistics.median(h for _, h in pairs)
        out[stage] = {
            "worker_ms": round(1000 * worker, 3),
            "hsm_ms": round(1000 * hsm, 3),
            "pdf_and_cms_ms": round(1000 * (worker - hsm), 3),
        }
    return out


async def measure(
    env: BenchEnv, records: list[Sample], workers: int
) -> tuple[dict[str, Any], list[bytes]]:
    """Sign every record through three stages, all records at once; figures and issued PDFs."""
    settings = env.dev.settings
    pool = SigningPool(settings.hsm.model_copy(update={"workers": workers}), settings.signing)
    await pool.start()
    try:
        # Warm up every worker on every key, so templates are built before the clock runs.
        warm = [records[n % len(records)] for n in range(4 * workers)]
        await asyncio.gather(*(_record(pool, env, s) for s in warm))
        before = procs.TreeSample.of(os.getpid())
        busy, wall = procs.machine_busy_s(), time.perf_counter()
        timings: Timings = {}
        versions = await asyncio.gather(*(_record(pool, env, s, timings) for s in records))
        wall = time.perf_counter() - wall
        busy = procs.machine_busy_s() - busy
        after = procs.TreeSample.of(os.getpid())
        cpu = procs.cpu_between(before, after)
        main_cpu = after.cpu_s[os.getpid()] - before.cpu_s[os.getpid()]
        batched = await _batched(pool, env, records, settings.amqp.batch_size)
    finally:
        await pool.close()
    for sample, signed in zip(records, versions, strict=True):
        chain = [sample.pdf, *signed]
        if not all(later.startswith(earlier) for earlier, later in itertools.pairwise(chain)):
            raise AssertionError("A version does not extend the one before it.")
    signatures = 3 * len(records)
    figures = {
        "workers": workers,
        **signing_rates(len(records), wall, cpu),
        # The event loop's side (handing PDFs to the workers and back) and the workers'.
        "cpu_s_per_signature_main": round(main_cpu / signatures, 5),
        "cpu_s_per_signature_hsm_workers": round((cpu - main_cpu) / signatures, 5),
        "machine_cpu_s_per_signature": round(busy / signatures, 5),
        "median_ms_per_stage": _per_stage(timings),
        # The same records in batches of amqp.batch_size, as the daemon hands them over.
        "batched": batched,
    }
    return figures, [v[-1] for v in versions]


async def _batched(
    pool: SigningPool, env: BenchEnv, records: list[Sample], size: int
) -> dict[str, Any]:
    groups = [records[n : n + size] for n in range(0, len(records), size)]
    before = procs.TreeSample.of(os.getpid())
    wall = time.perf_counter()
    signed = await asyncio.gather(*(_batch(pool, env, group) for group in groups))
    wall = time.perf_counter() - wall
    after = procs.TreeSample.of(os.getpid())
    for group, versions in zip(groups, signed, strict=True):
        for sample, chain in zip(group, versions, strict=True):
            if not all(b.startswith(a) for a, b in itertools.pairwise([sample.pdf, *chain])):
                raise AssertionError("A version does not extend the one before it.")
    cpu = procs.cpu_between(before, after)
    main_cpu = after.cpu_s[os.getpid()] - before.cpu_s[os.getpid()]
    signatures = 3 * len(records)
    return {
        "batch_size": size,
        **signing_rates(len(records), wall, cpu),
        "cpu_s_per_signature_main": round(main_cpu / signatures, 5),
        "cpu_s_per_signature_hsm_workers": round((cpu - main_cpu) / signatures, 5),
    }
