"""`python -m bench.run [--quick]`: one JSON document on stdout, a table on stderr.

Compares, in one run on the same PDFs, keys and machine: the HSM's raw C_Sign rate,
a plain pyHanko loop, the daemon's signing path alone, and the whole daemon (1 and 2
instances) against the real broker, database and MQTT, at B-B and at B-LTA (with the
dev TSA and OCSP in a process of their own). Figures count only when every issued
PDF validates.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench import end_to_end, fairness, hsm_raw, naive, pki_server, render, sign_path, verify_server
from bench.environment import BenchEnv, bench_env, samples
from bench.report import ratios, signing_rates, table
from bench.validation import validate
from daemon.stages import ORDER


@dataclass(frozen=True)
class Sizes:
    raw_s: float
    naive_records: int
    sign_path_records: int
    e2e_records: int
    paced_s: float  # 0: no run at half the maximum throughput
    schools: int
    fairness_burst: int = 0  # 0: no fairness scenario (bench/fairness.py)
    sign_path_runs: int = 1  # the signing path's median of this many runs (`_sign_path`)


QUICK = Sizes(
    raw_s=1.0, naive_records=3, sign_path_records=24, e2e_records=16, paced_s=0, schools=1
)
FULL = Sizes(
    raw_s=5.0,
    naive_records=12,
    sign_path_records=150,
    e2e_records=200,
    paced_s=15,
    # Four, so that the fairness scenario finds two schools in different shards (two
    # share one in about 1 run of 8; four all in one, about 1 in 500).
    schools=4,
    fairness_burst=6000,
    sign_path_runs=3,
)


async def bench(sizes: Sizes, mode: str) -> dict[str, Any]:
    started = time.perf_counter()
    _progress("setup: token, PKI, database, vhost, sample PDFs")
    async with (
        bench_env(schools=sizes.schools) as env,
        pki_server.started(env.dev.base / "pki") as pki,
    ):
        # The in-process scenarios sign at B-B; each end-to-end run names its level.
        env = _at_level(env, "B-B")
        pool_size = max(sizes.sign_path_records, sizes.e2e_records, sizes.naive_records)
        records = await asyncio.to_thread(samples, env.dev.schools, pool_size, env.tag)
        doc: dict[str, Any] = {"mode": mode, "machine": _machine(), "pdf": _pdf_stats(records)}
        labels = [env.key(s, stage).key_label for s in env.dev.schools for stage in ORDER]
        hsm = env.dev.settings.hsm
        cores = os.cpu_count() or 1
        _progress("hsm_raw")
        doc["hsm_raw"] = {
            "one_session": await asyncio.to_thread(hsm_raw.measure, hsm, labels, 1, sizes.raw_s),
            "n_sessions": await asyncio.to_thread(hsm_raw.measure, hsm, labels, cores, sizes.raw_s),
        }
        _progress("pyhanko_naive")
        doc["pyhanko_naive"], naive_issued = await asyncio.to_thread(
            _naive, env, records[: sizes.naive_records]
        )
        _progress("sign_path")
        doc["sign_path"], path_issued = await _sign_path(
            env, records[: sizes.sign_path_records], cores, sizes.sign_path_runs
        )
        issued = {"pyhanko_naive": naive_issued, "sign_path": path_issued}
        _progress("render")
        doc["render"] = await asyncio.to_thread(render.measure, max(10, 3 * sizes.naive_records))
        doc["end_to_end"] = await _end_to_end(
            env, records[: sizes.e2e_records], sizes, issued, pki.pid
        )
        if sizes.fairness_burst:
            _progress(f"fairness, a burst of {sizes.fairness_burst}")
            try:
                doc["fairness"] = await fairness.measure(env, records, sizes.fairness_burst)
            except RuntimeError as exc:  # e.g. the bench's schools share one shard
                doc["fairness"] = {"error": str(exc)}
        _progress("verify_server")
        doc["verify_server"] = await verify_server.measure(
            env.dev.settings, issued["end_to_end_1"], uploads=2 * sizes.e2e_records
        )
        _progress("validation")
        doc["validation"] = await asyncio.to_thread(
            validate, issued, env.dev.settings.signing.trust_roots
        )
    doc["valid"] = all(not v["errors"] for v in doc["validation"].values())
    doc["valid"] = doc["valid"] and doc["verify_server"]["concurrency_8"]["valid"]
    doc["ratios"] = ratios(doc)
    doc["bench_seconds"] = round(time.perf_counter() - started, 1)
    doc["phase_seconds"] = _phase_seconds(time.perf_counter())
    return doc


def _naive(env: BenchEnv, records: list[Any]) -> tuple[dict[str, Any], list[bytes]]:
    hsm = env.dev.settings.hsm
    jobs = [(r.pdf, {st: env.key(r.school, st).key_label for st in ORDER}) for r in records]
    # Its own process: one pkcs11.lib per process, and a single core as a user's loop has.
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        wall, cpu, issued = pool.submit(
            naive.run,
            str(hsm.module),
            hsm.token_label,
            hsm.resolved_pin().get_secret_value(),
            dict(hsm.env),
            jobs,
        ).result()
    return signing_rates(len(records), wall, cpu), issued


def _at_level(env: BenchEnv, level: str) -> BenchEnv:
    signing = env.dev.settings.signing.model_copy(update={"level": level})
    settings = env.dev.settings.model_copy(update={"signing": signing})
    return dataclasses.replace(env, dev=dataclasses.replace(env.dev, settings=settings))


async def _end_to_end(
    env: BenchEnv,
    records: list[Any],
    sizes: Sizes,
    issued: dict[str, list[bytes]],
    pki_pid: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for count in (1, 2):
        _progress(f"end_to_end, {count} instance(s)")
        async with end_to_end.instances(env, count, workers=_workers(count)) as running:
            # A short warm-up run: worker templates, connection pools, JIT-free but cold caches.
            await end_to_end.measure(env, running, records[:4], f"w{count}", pki_pid=pki_pid)
            figures, pdfs = await end_to_end.measure(
                env, running, records, f"i{count}", pki_pid=pki_pid
            )
            out[f"instances_{count}"] = figures
            issued[f"end_to_end_{count}"] = pdfs
            if count == 2 and sizes.paced_s:
                rate = figures["records_per_s"] / 2
                paced = records[: max(4, int(rate * sizes.paced_s))]
                _progress(f"end_to_end, paced at {rate:.1f} records/s")
                paced_figures, paced_pdfs = await end_to_end.measure(
                    env, running, paced, "p", rate_per_s=rate
                )
                out["paced_half_max"] = paced_figures
                issued["end_to_end_paced"] = paced_pdfs
    one, two = out["instances_1"], out["instances_2"]
    out["scale_out_2_vs_1"] = round(two["signatures_per_s"] / one["signatures_per_s"], 2)
    await _end_to_end_lta(env, records, issued, pki_pid, out)
    return out


async def _end_to_end_lta(
    env: BenchEnv,
    records: list[Any],
    issued: dict[str, list[bytes]],
    pki_pid: int,
    out: dict[str, Any],
) -> None:
    """The same records end to end at B-LTA (timestamps, DSS, document timestamp), and
    B-LTA's signatures/s over B-B's with as many instances (the issue's target: 0.7)."""
    for count in (1, 2):
        _progress(f"end_to_end at B-LTA, {count} instance(s)")
        async with end_to_end.instances(env, count, "B-LTA", workers=_workers(count)) as running:
            await end_to_end.measure(
                env, running, records[:4], f"lw{count}", level="B-LTA", pki_pid=pki_pid
            )
            figures, pdfs = await end_to_end.measure(
                env, running, records, f"l{count}", level="B-LTA", pki_pid=pki_pid
            )
        out[f"instances_{count}_b_lta"] = figures
        issued[f"end_to_end_{count}_b_lta"] = pdfs
        base = out[f"instances_{count}"]["signatures_per_s"]
        out[f"b_lta_vs_b_b_{count}"] = round(figures["signatures_per_s"] / base, 2)


async def _sign_path(
    env: BenchEnv, records: list[Any], workers: int, runs: int
) -> tuple[dict[str, Any], list[bytes]]:
    """The signing path measured `runs` times: the run of median CPU per signature job by
    job, with the median run in batches, and every run's figures (`runs`). Job by job
    is the bench's noisiest figure (1.9-3.7 ms a signature between runs on a 2-core
    VM), and issue 15's ratios divide by it."""
    measured = [await sign_path.measure(env, records, workers=workers) for _ in range(runs)]
    by_cpu = sorted(measured, key=lambda run: _cpu(run[0]))
    figures, issued = by_cpu[len(by_cpu) // 2]
    batches = sorted((run[0]["batched"] for run in measured), key=_cpu)
    summary = [{"cpu_s_per_signature": _cpu(f), "batched": _cpu(f["batched"])} for f, _ in measured]
    return {**figures, "batched": batches[len(batches) // 2], "runs": summary}, issued


def _cpu(figures: dict[str, Any]) -> float:
    return float(figures["cpu_s_per_signature"])


def _workers(instances: int) -> int:
    """HSM workers per instance: one per core of the machine in all, as many as the
    signing path has (and at least one each), as the README's "Scaling out" advises for
    SoftHSM, whose signing takes the same cores."""
    return max(1, (os.cpu_count() or 1) // instances)


def _machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "pyhanko": version("pyHanko"),
        "hsm": "SoftHSM2, RSA-2048",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _pdf_stats(records: list[Any]) -> dict[str, Any]:
    sizes = [len(r.pdf) / 1024 for r in records]
    return {
        "count": len(records),
        "kb_min": round(min(sizes), 1),
        "kb_median": round(statistics.median(sizes), 1),
        "kb_max": round(max(sizes), 1),
        "pages": "3-5",
    }


_PHASES: dict[str, float] = {}


def _progress(what: str) -> None:
    """Say which phase starts; remember when, for `phase_seconds`."""
    _PHASES[what] = time.perf_counter()
    print(f"bench: {what}…", file=sys.stderr, flush=True)


def _phase_seconds(end: float) -> dict[str, float]:
    marks = [*_PHASES.items(), ("end", end)]
    return {name: round(marks[n + 1][1] - at, 1) for n, (name, at) in enumerate(marks[:-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the under-a-minute run")
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    sizes, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    doc = asyncio.run(bench(sizes, mode))
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    print(table(doc), file=sys.stderr)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", "utf-8")
    return 0 if doc["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
