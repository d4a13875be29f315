"""`python -m bench.paired`: two variants of the daemon at the same moment, on one queue.

`bench.batching` runs variants in turns; on a shared 2-core VM the same variant's CPU
per signature swings ±15% from one turn to the next, more than most changes are worth.
Here one instance of each variant (`name:HOCBA_X=v,…`) consumes the same requests at
once, so a noisy neighbour weighs on both alike, and each one's CPU is divided by the
signatures it made itself (its `hocba_requests_total{outcome="signed"}`). One instance
relays every status event (the outbox's leader: the first started), so the start
order alternates round by round and the summary pairs the rounds up.

One JSON document on stdout: per round, each variant's signatures and CPU per
signature (main process, its kernel part, HSM workers); and per variant the mean of
each, with the difference to the first variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from typing import Any

import aiohttp

from bench import end_to_end, pki_server, procs
from bench.batching import parse_variant
from bench.environment import bench_env, samples

_SIGNED = "hocba_requests_total{"


async def _counts(instance: end_to_end.Instance) -> tuple[float, float]:
    """This instance's signatures so far (its /metrics, every stage), and its round
    trips to the HSM workers (`hocba_hsm_batch_jobs_count`)."""
    url = f"http://127.0.0.1:{instance.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    signed = trips = 0.0
    for line in text.splitlines():
        if line.startswith(_SIGNED) and 'outcome="signed"' in line:
            signed += float(line.rpartition(" ")[2])
        elif line.startswith("hocba_hsm_batch_jobs_count "):
            trips = float(line.rpartition(" ")[2])
    return signed, trips


async def _round(
    env: Any, variants: list[tuple[str, dict[str, str]]], pool: list[Any], tag: str, pki: Any
) -> dict[str, Any]:
    async with end_to_end.instances(env, 1, extra_env=variants[0][1]) as first:
        async with end_to_end.instances(env, 1, extra_env=variants[1][1], first=1) as second:
            running = [*first, *second]
            await end_to_end.measure(env, running, pool[:8], f"w{tag}", pki_pid=pki.pid)
            before = [procs.TreeSample.of(i.process.pid) for i in running]
            counted = [await _counts(i) for i in running]
            figures, _ = await end_to_end.measure(env, running, pool, f"r{tag}", pki_pid=pki.pid)
            after = [procs.TreeSample.of(i.process.pid) for i in running]
            counts = [await _counts(i) for i in running]
    out: dict[str, Any] = {"signatures_per_s": figures["signatures_per_s"], "variants": {}}
    for (name, _), instance, b, a, c0, c1 in zip(
        variants, running, before, after, counted, counts, strict=True
    ):
        pid = instance.process.pid
        main = procs.cpu_between(b, a, pid=pid)
        n, trips = c1[0] - c0[0], c1[1] - c0[1]
        out["variants"][name] = {
            "signatures": int(n),
            # Signatures per round trip to the workers: how full the batches were.
            "mean_hsm_batch": round(n / max(trips, 1), 2),
            "main_ms": round(1000 * main / max(n, 1), 3),
            "main_kernel_ms": round(
                1000 * procs.cpu_between(b, a, system=True, pid=pid) / max(n, 1), 3
            ),
            "hsm_workers_ms": round(1000 * (procs.cpu_between(b, a) - main) / max(n, 1), 3),
        }
    return out


async def compare(
    variants: list[tuple[str, dict[str, str]]], records: int, rounds: int
) -> dict[str, Any]:
    async with (
        bench_env(schools=2) as env,
        pki_server.started(env.dev.base / "pki") as pki,
    ):
        pool = await asyncio.to_thread(samples, env.dev.schools, records, env.tag)
        doc: dict[str, Any] = {"records": records, "rounds": []}
        for n in range(rounds):
            order = variants if n % 2 == 0 else variants[::-1]
            print(f"paired: round {n + 1}, {order[0][0]} leads…", file=sys.stderr, flush=True)
            doc["rounds"].append(await _round(env, order, pool, f"p{n}", pki))
        doc["summary"] = _summary([name for name, _ in variants], doc["rounds"])
        return doc


def _summary(names: list[str], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    means: dict[str, dict[str, Any]] = {
        name: {
            key: round(statistics.fmean(r["variants"][name][key] for r in rounds), 3)
            for key in ("main_ms", "main_kernel_ms", "hsm_workers_ms", "mean_hsm_batch")
        }
        for name in names
    }
    base = means[names[0]]
    for name in names[1:]:
        diffs = [r["variants"][name]["main_ms"] - r["variants"][names[0]]["main_ms"]
                 for r in rounds]  # fmt: skip
        means[name]["main_ms_minus_first"] = round(statistics.fmean(diffs), 3)
        means[name]["main_ms_minus_first_each_round"] = [round(d, 3) for d in diffs]
        means[name]["main_ratio_to_first"] = round(means[name]["main_ms"] / base["main_ms"], 3)
    return means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=4, help="even: each variant leads as often")
    parser.add_argument("variant", nargs=2, help="name:HOCBA_SETTING=value,…")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    print(json.dumps(asyncio.run(compare(variants, args.records, args.rounds)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
