"""The HSM session pool: PDF signing in worker processes, one login per process.

Why processes, not threads: with SoftHSM2 and python-pkcs11 a second `pkcs11.lib` in
a process broke later calls, login is per process, and sessions used from threads
beside a logged-in one failed or crashed the interpreter. So each worker process
loads the library once, logs in once, keeps one session and signs whole PDFs with
it; the event loop only awaits. Exceptions crossing back are ours (they pickle:
their only argument is the message). A batch of jobs crosses in one round trip
(`sign_many`), each job with its own result or error: a py-spy profile put
the hand-off through `ProcessPoolExecutor` (a future, its feeder and manager threads,
the pickles) at ~16% of the main process's samples when every job crossed alone.
The workers' side is daemon/hsm_worker.py.

Recycling (`hsm.recycle_after_jobs`): after that many signatures the pool spawns a
fresh set of workers, waits until they have logged in, sends new jobs to them, and
only then lets the old workers finish the jobs they hold and exit. No request waits
for a login and none is lost; whatever a PKCS#11 library or the allocator keeps
growing in a long-lived process is bounded by one generation's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from typing import Any, TypeVar

from asn1crypto import x509

from daemon import hsm_worker as worker
from daemon.errors import ConfigError, HocbaError, HsmUnavailable, Unauthorized
from daemon.hsm_jobs import CmsJob, Keep, PdfJob, SignResult, WorkerConfig
from daemon.hsm_worker import CHAIN_CERT_LABEL, check_certificate
from daemon.metrics import HSM_BATCH_JOBS, HSM_ERRORS, HSM_SESSIONS_IN_USE
from daemon.settings import HsmSettings, SigningSettings
from daemon.stages import Stage

__all__ = [
    "CHAIN_CERT_LABEL",
    "Keep",
    "KeyRef",
    "SignJob",
    "SignResult",
    "SigningPool",
    "authorize",
    "check_certificate",
]

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRef:
    school_id: str
    token_label: str
    key_label: str


@dataclass(frozen=True)
class SignJob:
    pdf: bytes = field(repr=False)
    stage: Stage
    key: KeyRef
    keep: Keep | None = None  # the worker stores the signed PDF (and a new input) itself


def authorize(key: KeyRef, token_label: str) -> None:
    """A school may use only its own keys, and only on the configured token."""
    if key.token_label != token_label:
        raise Unauthorized(f"Key {key.key_label} is not on this deployment's token.")
    signer_id = key.key_label.removeprefix(f"{key.school_id}/")
    if not key.school_id or signer_id == key.key_label or not signer_id:
        raise Unauthorized(f"School {key.school_id} may not use key {key.key_label}.")


class SigningPool:
    """Worker processes that sign PDFs with keys in one token; bounded, timed out."""

    def __init__(self, hsm: HsmSettings, signing: SigningSettings) -> None:
        self._hsm = hsm
        self._bytes_reserved = signing.bytes_reserved
        self._unsigned_bytes = signing.timestamp_bytes_reserved if signing.timestamped else 0
        self._slots = asyncio.Semaphore(hsm.workers)
        self._executor: ProcessPoolExecutor | None = None
        self._jobs = 0  # signatures sent to the current executor
        self._recycling: asyncio.Task[None] | None = None
        # Executors being stopped, each with its one shutdown (see _stop).
        self._retiring: dict[ProcessPoolExecutor, asyncio.Future[None]] = {}

    async def start(self) -> None:
        """Spawn the workers; raise at once if the token cannot be opened."""
        if not self._hsm.module.is_file():
            raise ConfigError(f"PKCS#11 module {self._hsm.module} does not exist.")
        self._executor = self._spawn()
        try:
            await asyncio.gather(*(self.ping() for _ in range(self._hsm.workers)))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        recycling, self._recycling = self._recycling, None
        if recycling is not None:
            recycling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recycling
        executor, self._executor = self._executor, None
        for old in [*self._retiring, *([executor] if executor else [])]:
            await self._stop(old, cancel_futures=True)

    async def _stop(self, executor: ProcessPoolExecutor, *, cancel_futures: bool) -> None:
        """Let `executor`'s workers finish what they hold (up to op_timeout_s), then exit.

        One shutdown an executor, however many callers wait for it: close() during a
        recycle's stop waits for that stop. Two `shutdown(wait=True)` at once both
        close its result queue, and the second `os.close` of the same descriptor
        raised EBADF (CI, after a recycle whose fresh workers could not log in) or
        could close a descriptor reused meanwhile by another thread.
        """
        stopping = self._shutdown(executor, cancel_futures=cancel_futures)
        try:
            await asyncio.wait_for(asyncio.shield(stopping), self._hsm.op_timeout_s)
        except TimeoutError:
            _terminate(executor)  # a worker hangs in the HSM; shutdown then returns
            await stopping

    def _shutdown(
        self, executor: ProcessPoolExecutor, *, cancel_futures: bool
    ) -> asyncio.Future[None]:
        # Kept in _retiring until stopped, so that close() finishes a cancelled stop.
        stopping = self._retiring.get(executor)
        if stopping is None:
            stopping = asyncio.ensure_future(
                asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=cancel_futures)
            )
            self._retiring[executor] = stopping
            stopping.add_done_callback(lambda done: self._stopped(executor, done))
        return stopping

    def _stopped(self, executor: ProcessPoolExecutor, done: asyncio.Future[None]) -> None:
        if self._retiring.get(executor) is done:
            del self._retiring[executor]
        error = None if done.cancelled() else done.exception()
        if error is not None:
            log.warning("HSM workers did not stop cleanly: %r", error)

    @property
    def keeps(self) -> bool:
        return True  # `SignJob.keep`: the workers store what they sign, as told

    async def sign(self, job: SignJob) -> SignResult:
        (result,) = await self.sign_many([job])
        if isinstance(result, Exception):
            raise result
        return result

    async def sign_many(self, jobs: Sequence[SignJob]) -> list[SignResult | Exception]:
        """Each job's signature or its own error, in order; one round trip for them all.

        One submit for the batch, not one a worker: with 2 workers, one of 8 cost less
        CPU and signed as fast as two of 4 (README "Throughput"), the other worker
        taking the next batch. A job refused by the token fails alone; a worker's death
        or a hung HSM fails the batch as transient, as it failed one job before batches.
        """
        results: dict[int, SignResult | Exception] = {}
        allowed: list[int] = []
        for n, job in enumerate(jobs):
            try:
                authorize(job.key, self._hsm.token_label)
            except Unauthorized as exc:
                results[n] = exc
            else:
                allowed.append(n)
        if allowed:
            signed = await self._sign_batch([jobs[n] for n in allowed])
            results.update(zip(allowed, signed, strict=True))
        return [results[n] for n in range(len(jobs))]

    async def _sign_batch(self, jobs: list[SignJob]) -> list[SignResult | Exception]:
        requests = [
            PdfJob(
                job.pdf,
                job.stage,
                job.key.key_label,
                self._bytes_reserved,
                self._unsigned_bytes,
                job.keep,
            )
            for job in jobs
        ]
        HSM_BATCH_JOBS.observe(len(requests))
        try:
            signed = await self._call(worker.sign_pdfs, requests, signatures=len(requests))
        except Exception as exc:  # the worker died, hung or is gone: the whole batch failed
            return [exc] * len(jobs)
        results: list[SignResult | Exception] = []
        for outcome, job in zip(signed, jobs, strict=True):
            if isinstance(outcome, HsmUnavailable):
                HSM_ERRORS.labels("token").inc()  # as _call counts one job's
            results.append(outcome if isinstance(outcome, Exception) else outcome.result(job.pdf))
        return results

    async def ping(self) -> None:
        """Raise HsmUnavailable unless a worker's session answers."""
        await self._call(worker.ping)

    async def certificate(self, key: KeyRef) -> x509.Certificate:
        authorize(key, self._hsm.token_label)
        der = await self._call(worker.certificate_der, key.key_label)
        return x509.Certificate.load(der)

    async def chain(self) -> list[x509.Certificate]:
        """The CA certificates the token holds for every signature (the signers' issuers)."""
        return [x509.Certificate.load(der) for der in await self._call(worker.chain_der)]

    async def sign_cms(self, key: KeyRef, data: bytes, signing_time: datetime) -> bytes:
        """A CAdES detached signature (DER) over `data`; same time, same bytes (RSA PKCS#1 v1.5)."""
        authorize(key, self._hsm.token_label)
        cms = CmsJob(data, key.key_label, signing_time)
        return await self._call(worker.sign_cms, cms, signatures=1)

    def _spawn(self) -> ProcessPoolExecutor:
        config = WorkerConfig(
            module=str(self._hsm.module),
            token_label=self._hsm.token_label,
            pin=self._hsm.resolved_pin().get_secret_value(),
            env=dict(self._hsm.env),
        )
        return ProcessPoolExecutor(
            self._hsm.workers,
            mp_context=get_context("spawn"),
            initializer=worker.init_worker,
            initargs=(config,),
        )

    async def _call(self, fn: Callable[..., T], *args: Any, signatures: int = 0) -> T:
        async with self._slots:
            executor = self._executor
            if executor is None:
                raise HsmUnavailable("The signing pool is not started.")
            loop = asyncio.get_running_loop()
            if signatures:
                self._count_signatures(signatures)
            try:
                # submit itself raises BrokenProcessPool once a worker has died.
                call = loop.run_in_executor(executor, fn, *args)
                with HSM_SESSIONS_IN_USE.track_inprogress():
                    async with asyncio.timeout(self._hsm.op_timeout_s):
                        return await call
            except HsmUnavailable:
                HSM_ERRORS.labels("token").inc()
                raise
            except TimeoutError as exc:
                HSM_ERRORS.labels("timeout").inc()
                self._replace(executor, kill=True)
                raise HsmUnavailable(
                    f"The HSM did not answer within {self._hsm.op_timeout_s}s."
                ) from exc
            except BrokenProcessPool as exc:
                HSM_ERRORS.labels("worker_died").inc()
                self._replace(executor, kill=False)
                raise HsmUnavailable("A signing worker process died.") from exc

    def _count_signatures(self, count: int) -> None:
        self._jobs += count
        limit = self._hsm.recycle_after_jobs
        if limit and self._jobs >= limit and self._recycling is None:
            self._recycling = asyncio.create_task(self._recycle(), name="hsm-recycle")

    async def _recycle(self) -> None:
        """A fresh generation of workers, logged in, before the old one leaves."""
        try:
            old, jobs = self._executor, self._jobs
            try:
                fresh = self._spawn()  # reads the PIN again: it may have been rotated
            except HocbaError as exc:
                log.warning("HSM workers not recycled: %s", exc)
                self._jobs = 0
                return
            try:
                loop = asyncio.get_running_loop()
                workers = range(self._hsm.workers)
                pings = [loop.run_in_executor(fresh, worker.ping) for _ in workers]
                async with asyncio.timeout(self._hsm.op_timeout_s):
                    await asyncio.gather(*pings)
            except (HocbaError, TimeoutError, BrokenProcessPool) as exc:
                # The old workers keep signing; try again after another generation's jobs.
                log.warning(
                    "HSM workers not recycled: the fresh ones did not log in (%s).",
                    type(exc).__name__,
                )
                self._jobs = 0
                await self._stop(fresh, cancel_futures=True)
                return
            except BaseException:
                _terminate(fresh)
                self._shutdown(fresh, cancel_futures=True)  # close() waits for it to exit
                raise
            if self._executor is not old or old is None:
                # Replaced meanwhile (a worker died or hung): the fresh ones are spare.
                await self._stop(fresh, cancel_futures=True)
                return
            self._executor, self._jobs = fresh, 0
            log.info("HSM workers recycled after %d signatures.", jobs)
            await self._stop(old, cancel_futures=False)
        finally:
            if self._recycling is asyncio.current_task():
                self._recycling = None

    def _replace(self, executor: ProcessPoolExecutor, *, kill: bool) -> None:
        if self._executor is executor:
            self._executor = self._spawn()
            self._jobs = 0
        if kill:
            _terminate(executor)
        # Its one shutdown, which close() waits for; not a second one beside a
        # recycle's stop of the same executor (see _stop).
        self._shutdown(executor, cancel_futures=True)


def _terminate(executor: ProcessPoolExecutor) -> None:
    # A worker stuck in a PKCS#11 call cannot be cancelled, only ended;
    # ProcessPoolExecutor has no public way to do that before Python 3.14.
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()
