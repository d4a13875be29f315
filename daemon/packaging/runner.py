"""Packages on command and on schedule; owns the tasks that follow submissions.

`package` builds a round's package and, if asked, starts following it (submission,
then polling) in a task kept here; `tick` resumes every unfinished package and builds
what the schedule says is due; `run_schedule` ticks at start-up and then every
interval until stopped. `close` cancels the followers: their progress is in the
database, so the next start resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from uuid import UUID

from daemon.clock import Clock, vietnam_now
from daemon.database import Database
from daemon.errors import HocbaError
from daemon.metrics import RECORDS_WAITING
from daemon.packaging import packages
from daemon.packaging.builder import Packager
from daemon.packaging.packages import Package, PackageState
from daemon.packaging.schedule import due_rounds
from daemon.packaging.submission import Submitter
from daemon.settings import PackagingSettings

log = logging.getLogger(__name__)


class PackageRunner:
    def __init__(
        self,
        db: Database,
        packager: Packager,
        submitter: Submitter,
        settings: PackagingSettings,
        clock: Clock = vietnam_now,
    ) -> None:
        self.clock = clock
        self.db = db
        self.packager = packager
        self.submitter = submitter
        self.settings = settings
        self._followers: dict[UUID, asyncio.Task[Package]] = {}

    async def package(
        self, school_id: str, year: str, round_: int, *, submit: bool
    ) -> Package | None:
        """Build the round's package (None when nothing waits); follow it if `submit`."""
        package = await self.packager.build(school_id, year, round_)
        if package is not None and submit:
            self.follow(package)
        return package

    def follow(self, package: Package) -> asyncio.Task[Package]:
        """The task following this package, started unless one runs already."""
        task = self._followers.get(package.package_id)
        if task is None or task.done():
            task = asyncio.create_task(
                self.submitter.follow(package), name=f"follow-{package.package_id}"
            )
            self._followers[package.package_id] = task
            task.add_done_callback(self._followed)
        return task

    async def settled(self) -> list[Package]:
        """Wait for every follower started so far; the packages as they ended."""
        tasks = list(self._followers.values())
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r for r in results if isinstance(r, Package)]

    async def resume(self) -> int:
        """Finish building and follow every unfinished package; how many there were."""
        async with self.db.connection() as conn:
            unfinished = await packages.unfinished(conn)
        for package in unfinished:
            if package.state is PackageState.BUILDING:
                package = await self.packager.write(package)
            self.follow(package)
        return len(unfinished)

    async def tick(self, at: datetime) -> None:
        """Resume what is unfinished, then package every school whose round is due."""
        await self.resume()
        rounds = due_rounds(
            at.date(), self.settings.deadlines, self.settings.lead_days, self.settings.grace_days
        )
        for year, round_ in rounds:
            async with self.db.connection() as conn:
                schools = await packages.schools_waiting(conn, year, round_)
            for school_id in schools:
                await self.package(school_id, year, round_, submit=self.settings.submit)
        await self.refresh_waiting()

    async def refresh_waiting(self) -> None:
        async with self.db.connection() as conn:
            counts = await packages.waiting_counts(conn)
        RECORDS_WAITING.clear()
        for year, round_, count in counts:
            RECORDS_WAITING.labels(year, str(round_)).set(count)

    async def run_schedule(self, stop: asyncio.Event) -> None:
        """Tick now and then every interval until `stop`; a failed tick waits for the next."""
        interval = self.settings.schedule_interval_s
        if interval is None:
            return
        while not stop.is_set():
            try:
                await self.tick(self.clock())
            except HocbaError as exc:
                log.warning("Packaging schedule tick failed: %s", exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def close(self) -> None:
        tasks = list(self._followers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _followed(self, task: asyncio.Task[Package]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, HocbaError):
            log.warning("Following a package stopped: %s It will be resumed.", error.message)
        elif error is not None:
            log.error("Following a package failed.", exc_info=error)
