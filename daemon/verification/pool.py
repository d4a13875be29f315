"""verify-server's checks in worker processes (`PoolChecker`), and its read-only registry.

The checks (pyHanko, CPU-bound) run in a spawned process pool; no more than
`workers * queue_per_worker` wait at once, each is timed, and a pool broken by a dying
worker is replaced. With a registry, the main process judges each file again with who
the registry has its signers as (daemon.verification.basis).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import multiprocessing
from typing import Any, Protocol

from daemon.settings import Settings
from daemon.verification import basis, checks, lookup

log = logging.getLogger("hocba_signer.verify_server")

__all__ = ["Busy", "Checker", "DatabaseRegistry", "PoolChecker", "Registry"]


class Registry(basis.SignerRegistry, Protocol):
    async def registered(self, sha256: str) -> lookup.Registered: ...


class Checker(Protocol):
    async def check(
        self, kind: str, body: bytes, registry: basis.SignerRegistry | None = None
    ) -> dict[str, Any]: ...


class Busy(Exception):
    """Raised when every worker is taken and the queue is full."""


class PoolChecker:
    """Runs daemon.verification.checks.check in worker processes, bounded and timed.

    Workers are started by spawn (never a fork of the running loop) and warmed up; a
    pool broken by a dying worker is replaced, so one hostile file costs one answer.
    """

    def __init__(self, settings: Settings) -> None:
        server = settings.verify_server
        self._workers = server.workers
        self._roots = tuple(str(p) for p in settings.signing.trust_roots)
        self._verification = settings.verification
        self._rules = settings.verification.model_dump()
        self._timeout_s = server.check_timeout_s
        self._slots = server.workers * server.queue_per_worker
        self._waiting = 0
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        warm = [loop.run_in_executor(self._pool, checks.warm) for _ in range(self._workers)]
        await asyncio.gather(*warm)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def check(
        self, kind: str, body: bytes, registry: basis.SignerRegistry | None = None
    ) -> dict[str, Any]:
        """The public report; with `registry`, its verdicts are the registry's."""
        checked = await self._checked(kind, body)
        if registry is not None and checked.record is not None:
            record = await basis.record(registry, checked.record, self._verification)
            checked = dataclasses.replace(checked, record=record)
        elif registry is not None and checked.package is not None:
            package = await basis.package(registry, checked.package, self._verification)
            checked = dataclasses.replace(checked, package=package)
        return checks.shape(checked)

    async def _checked(self, kind: str, body: bytes) -> checks.Checked:
        if self._waiting >= self._slots:
            raise Busy
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            job = loop.run_in_executor(
                self._pool, checks.check, kind, body, self._roots, self._rules
            )
            # A check that times out keeps its worker until it ends; the client is told now.
            return await asyncio.wait_for(job, self._timeout_s)
        except concurrent.futures.process.BrokenProcessPool:
            log.error("A check worker died on a %s of %d bytes; starting new workers.", kind,
                      len(body))  # fmt: skip
            broken, self._pool = self._pool, self._new_pool()
            broken.shutdown(wait=False, cancel_futures=True)
            raise Busy from None
        finally:
            self._waiting -= 1


class DatabaseRegistry(basis.DatabaseSigners):
    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self._db = db

    async def registered(self, sha256: str) -> lookup.Registered:
        return await lookup.registered(self._db, sha256)
