"""A batch of jobs through the HSM pool and the levels around it, against SoftHSM."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal

import aiohttp
from prometheus_client import REGISTRY

from daemon.errors import CertificateInvalid, HsmUnavailable, NotAPdf, Unauthorized, UnknownSigner
from daemon.hsm import KeyRef, SignJob, SignResult
from daemon.ltv.levels import LeveledSigning
from daemon.ltv.status import CertificateStatus
from daemon.pdf.validation import validate_pdf
from daemon.settings import SigningSettings
from daemon.stages import Stage
from tests.hsm_fixtures import EXPIRED_SCHOOL, SCHOOLS, DevHsm
from tests.pki_services_fixtures import MemoryStatusCache

TEACHER = Stage.HOMEROOM_TEACHER


def _jobs(dev_hsm: DevHsm, pdf: bytes) -> list[SignJob]:
    """Good jobs of both schools, with one of each way a single job can fail between them."""
    good = [dev_hsm.key(SCHOOLS[n % 2], f"GV-000{n % 2 + 1}") for n in range(6)]
    foreign = KeyRef(SCHOOLS[1], good[0].token_label, good[0].key_label)
    return [
        SignJob(pdf, TEACHER, good[0]),
        SignJob(pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-9999")),  # no such key
        SignJob(pdf, TEACHER, good[1]),
        SignJob(pdf, TEACHER, dev_hsm.key(EXPIRED_SCHOOL, "GV-0001")),
        SignJob(pdf, TEACHER, good[2]),
        SignJob(b"not a PDF at all", TEACHER, good[3]),
        SignJob(pdf, TEACHER, foreign),  # another school's key
        SignJob(pdf, TEACHER, good[4]),
        SignJob(pdf, TEACHER, good[5]),
    ]


async def _valid(dev_hsm: DevHsm, job: SignJob, result: SignResult | Exception) -> None:
    assert isinstance(result, SignResult), result
    assert result.pdf.startswith(job.pdf)
    [report] = await asyncio.to_thread(validate_pdf, result.pdf, dev_hsm.trust_roots)
    assert report.bottom_line
    assert report.cert_serial == result.cert_serial
    signer = {s.key_label: s for s in dev_hsm.signers}[job.key.key_label]
    assert result.cert_serial == signer.cert_serial


async def _each_its_own(
    dev_hsm: DevHsm, jobs: list[SignJob], results: list[SignResult | Exception]
) -> None:
    """The failing jobs of `_jobs` with their own errors, every other one validly signed."""
    assert isinstance(results[1], UnknownSigner)
    assert isinstance(results[3], CertificateInvalid)
    assert isinstance(results[5], NotAPdf)
    assert isinstance(results[6], Unauthorized)
    for n in (0, 2, 4, 7, 8):
        await _valid(dev_hsm, jobs[n], results[n])


async def test_a_failing_job_fails_only_itself(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    # Given two workers and a batch where four jobs cannot be signed, each for its reason
    pool = await signing_pool(workers=2)
    jobs = _jobs(dev_hsm, homeroom_pdf)
    rounds, handed = _batch_jobs()

    # When the batch is signed in one call
    results = await pool.sign_many(jobs)

    # Then each failing job has its own error and every other one is signed by its key
    assert len(results) == len(jobs)
    await _each_its_own(dev_hsm, jobs, results)
    assert len({r.sha256 for r in results if isinstance(r, SignResult)}) == 5
    # and the workers got it in one round trip: all but the other school's key's job,
    # which never left this process
    assert _batch_jobs() == (rounds + 1, handed + len(jobs) - 1)


def _batch_jobs() -> tuple[float, float]:
    """hocba_hsm_batch_jobs so far: round trips, and signatures handed over in them."""
    count = REGISTRY.get_sample_value("hocba_hsm_batch_jobs_count") or 0.0
    return count, REGISTRY.get_sample_value("hocba_hsm_batch_jobs_sum") or 0.0


async def test_a_batch_through_the_levels_keeps_each_jobs_error(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    # Given the B-B signing the pipeline uses, around one worker
    pool = await signing_pool(workers=1)
    jobs = _jobs(dev_hsm, homeroom_pdf)
    async with aiohttp.ClientSession() as client:
        status = CertificateStatus(client, MemoryStatusCache(), SigningSettings())
        signing = LeveledSigning(pool, status, None, "B-B")

        # When the batch is signed
        results = await signing.sign_many(jobs)

    # Then the key that does not exist and the foreign key fail before the HSM signs,
    # the expired certificate and the non-PDF in the worker, each alone
    await _each_its_own(dev_hsm, jobs, results)


async def test_a_dead_worker_fails_its_batch_as_transient(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    # Given a pool that has signed, whose workers are then killed
    pool = await signing_pool(workers=2)
    jobs = [SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-0001"))] * 6
    assert all(isinstance(r, SignResult) for r in await pool.sign_many(jobs))
    for child in multiprocessing.active_children():
        # The executor ends the other worker itself once it sees the first one die.
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid or 0, signal.SIGKILL)
        child.join()

    # When a batch is sent, then each of its jobs fails as transient
    results = await pool.sign_many(jobs)
    assert len(results) == 6
    assert all(isinstance(r, HsmUnavailable) for r in results)

    # And the next batch is signed by fresh workers
    for job, result in zip(jobs, await pool.sign_many(jobs), strict=True):
        await _valid(dev_hsm, job, result)


async def test_recycling_counts_each_signature_of_a_batch(
    dev_hsm: DevHsm, signing_pool, homeroom_pdf: bytes
) -> None:
    # Given one worker to be replaced after 4 signatures
    pool = await signing_pool(workers=1, recycle_after_jobs=4)
    first = multiprocessing.active_children()
    assert len(first) == 1
    jobs = [SignJob(homeroom_pdf, TEACHER, dev_hsm.key(SCHOOLS[0], "GV-0001"))] * 4

    # When one batch of 4 is signed (a single round trip)
    results = await pool.sign_many(jobs)

    # Then the worker is recycled: it leaves on its own, and a fresh one signs the next
    assert all(isinstance(r, SignResult) for r in results)
    await asyncio.to_thread(first[0].join, 30)
    assert first[0].exitcode == 0
    await _valid(dev_hsm, jobs[0], (await pool.sign_many(jobs[:1]))[0])
    assert first[0].pid not in {p.pid for p in multiprocessing.active_children()}
