"""Records rendered per second: the v2 path's extra work before the teacher's signature.

One core, in-process, the same renderer and checks DocumentSource.rendered runs
(render, then the intake check), on sample records of every grade. Every PDF must be
accepted by the intake check and carry its record's XML, or the figure does not count.
Then the daemon's way, `RenderPool`, against a thread: records/s through it, and the
event loop's worst lag while it renders (a 10 ms ticker), which is what every other
request waits for.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from daemon.documents import RenderPool
from daemon.messages import RecordInfo
from daemon.pdf.pades import inspect_pdf
from daemon.record.attached import attached_record_xml
from daemon.record.render import render_record
from daemon.record.xml import canonical_xml
from producers.school_system import sample_record, sample_record_data

MAX_BYTES = 20 * 1024 * 1024


def measure(records: int, seed: int = 13) -> dict[str, Any]:
    rng = random.Random(seed)
    infos: list[RecordInfo] = [sample_record(rng, "31000101", "bench", n) for n in range(records)]
    samples = [(i, sample_record_data(rng, i, "31000101")) for i in infos]
    # Once per process: the fonts are cut and the shared PDF objects built, and the
    # intake check's first call imports pyHanko (~0.6 s); neither is a record's cost.
    warm = render_record(samples[0][0].record_id, samples[0][1])
    inspect_pdf(warm, MAX_BYTES)
    attached_record_xml(warm)
    durations_s, sizes = [], []
    started = time.perf_counter()
    for info, data in samples:
        t0 = time.perf_counter()
        pdf = render_record(info.record_id, data)
        inspect_pdf(pdf, MAX_BYTES)
        durations_s.append(time.perf_counter() - t0)
        sizes.append(len(pdf))
        if attached_record_xml(pdf) != canonical_xml(info.record_id, data):
            raise AssertionError(f"record {info.record_id} lost its XML")
    elapsed_s = time.perf_counter() - started
    return {
        "records": records,
        "records_per_s": round(records / elapsed_s, 1),
        "ms_per_record_p50": round(statistics.median(durations_s) * 1000, 1),
        "ms_per_record_max": round(max(durations_s) * 1000, 1),
        "pdf_bytes_mean": round(statistics.mean(sizes)),
        "cores": 1,
    }


async def _through(pool: RenderPool, samples: list[Any]) -> dict[str, float]:
    lag_s = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag_s
        loop = asyncio.get_running_loop()
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lag_s = max(lag_s, loop.time() - t0 - 0.01)

    await pool.render(samples[0][0].record_id, samples[0][1], MAX_BYTES)  # warm every worker
    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await asyncio.gather(*(pool.render(i.record_id, d, MAX_BYTES) for i, d in samples))
    elapsed_s = time.perf_counter() - started
    done.set()
    await tick
    await pool.close()
    return {
        "records_per_s": round(len(samples) / elapsed_s, 1),
        "loop_lag_ms_max": round(lag_s * 1000, 1),
    }


def measure_pool(records: int, workers: int, seed: int = 13) -> dict[str, Any]:
    """RenderPool(workers) (0: a thread of this process) rendering `records` at once."""
    rng = random.Random(seed)
    infos = [sample_record(rng, "31000101", "bench", n) for n in range(records)]
    samples = [(i, sample_record_data(rng, i, "31000101")) for i in infos]
    result = asyncio.run(_through(RenderPool(workers), samples))
    return {"records": records, "render_workers": workers, **result}


if __name__ == "__main__":
    import json

    print(json.dumps(measure(20)))
    for workers in (0, 1, 2):
        print(json.dumps(measure_pool(20, workers)))
