"""HSM workers recycled after `hsm.recycle_after_jobs` signatures, against SoftHSM."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.process import BaseProcess

import pytest

from daemon.hsm import SignJob
from daemon.pdf.validation import validate_pdf
from daemon.stages import Stage
from tests.hsm_fixtures import SCHOOLS, DevHsm

TEACHER = Stage.HOMEROOM_TEACHER


async def _exited(processes: list[BaseProcess]) -> list[int | None]:
    for process in processes:
        await asyncio.to_thread(process.join, 30)
    return [process.exitcode for process in processes]


@pytest.fixture
def waited_shutdowns(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How often each executor was shut down with wait=True (the stdlib's own, counted)."""
    counts: Counter[int] = Counter()
    shutdown = ProcessPoolExecutor.shutdown

    def counted(self: ProcessPoolExecutor, wait: bool = True, **kwargs: bool) -> None:
        counts[id(self)] += wait
        shutdown(self, wait, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "shutdown", counted)
    return counts


async def _sign_until_a_recycle_fails(pool, job: SignJob, caplog) -> None:
    signed = 0
    with caplog.at_level(logging.WARNING, logger="daemon.hsm"):
        while "not recycled" not in caplog.text and signed < 500:
            await pool.sign(job)
            signed += 1
    assert "not recycled" in caplog.text


async def test_workers_are_replaced_without_losing_a_signature(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    # Given two workers to be replaced every 5 signatures
    pool = await signing_pool(workers=2, recycle_after_jobs=5)
    first_generation = multiprocessing.active_children()
    assert len(first_generation) == 2
    jobs = [
        SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[n % 2], f"GV-000{n % 2 + 1}"))
        for n in range(30)
    ]

    # When 30 records are signed at once, then 10 more one after the other
    results = await asyncio.gather(*(pool.sign(job) for job in jobs))
    for job in jobs[:10]:
        results.append(await pool.sign(job))

    # Then every signature was made and validates
    assert len(results) == 40
    for result in results[::4]:
        [report] = await asyncio.to_thread(validate_pdf, result.pdf, dev_hsm.trust_roots)
        assert report.bottom_line
    # and the first workers left on their own (not killed), replaced by fresh ones
    assert await _exited(first_generation) == [0, 0]
    now = {p.pid for p in multiprocessing.active_children()}
    assert now and now.isdisjoint(p.pid for p in first_generation)
    await pool.ping()


async def test_closing_during_a_recycle_leaves_no_worker(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    # Given a pool that recycles after every signature
    pool = await signing_pool(workers=1, recycle_after_jobs=1)
    job = SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-0001"))

    # When it is closed while fresh workers log in (the second signature finishes on
    # the old worker as the first one's recycle starts)
    await asyncio.gather(pool.sign(job), pool.sign(job))
    await pool.close()

    # Then no worker process is left, old or fresh
    assert multiprocessing.active_children() == []


async def test_no_recycling_when_disabled(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    pool = await signing_pool(workers=1, recycle_after_jobs=0)
    [worker] = multiprocessing.active_children()
    job = SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-0001"))

    for _ in range(5):
        await pool.sign(job)

    assert [p.pid for p in multiprocessing.active_children()] == [worker.pid]


async def test_fresh_workers_that_cannot_log_in_leave_the_old_ones_signing(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes, tmp_path, caplog
) -> None:
    # Given a pool whose PIN file is then overwritten with a wrong PIN
    pin_file = tmp_path / "hsm-pin"
    pin_file.write_text(dev_hsm.pin)
    pool = await signing_pool(workers=1, recycle_after_jobs=2, pin=None, pin_file=pin_file)
    [first] = multiprocessing.active_children()
    job = SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-0001"))
    await pool.sign(job)
    pin_file.write_text("0000")

    # When signatures go on until a recycle has been tried (and failed)
    await _sign_until_a_recycle_fails(pool, job, caplog)

    # Then every one of them was signed, by the worker logged in before
    assert first.is_alive() and first.exitcode is None
    result = await pool.sign(job)
    [report] = await asyncio.to_thread(validate_pdf, result.pdf, dev_hsm.trust_roots)
    assert report.bottom_line


async def test_two_closes_at_once_shut_the_workers_down_once(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes, waited_shutdowns: Counter[int]
) -> None:
    # Given a pool that has signed
    pool = await signing_pool(workers=1, recycle_after_jobs=0)
    await pool.sign(SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-0001")))

    # When two closes run at once (a signal's and a failed start's)
    await asyncio.gather(pool.close(), pool.close())

    # Then the executor was shut down once: two at once both closed its result queue's
    # descriptor, the second close raising EBADF or closing a descriptor reused meanwhile
    assert list(waited_shutdowns.values()) == [1]
    assert multiprocessing.active_children() == []


async def test_closing_while_a_failed_recycle_stops_its_fresh_workers(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes, tmp_path, caplog,
    waited_shutdowns: Counter[int],
) -> None:  # fmt: skip
    # Given a pool whose recycle has just failed (a wrong PIN), its fresh workers stopping
    pin_file = tmp_path / "hsm-pin"
    pin_file.write_text(dev_hsm.pin)
    pool = await signing_pool(workers=1, recycle_after_jobs=2, pin=None, pin_file=pin_file)
    job = SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-0001"))
    await pool.sign(job)
    pin_file.write_text("0000")
    await _sign_until_a_recycle_fails(pool, job, caplog)

    # When the pool is closed at once
    await pool.close()

    # Then each generation was shut down once, and no worker is left
    assert sorted(waited_shutdowns.values()) == [1, 1]
    assert multiprocessing.active_children() == []
