"""Fixtures of the package tests: the ministry simulator, issued records, a packager.

Import them into a test module: `from tests.integration.package_fixtures import *`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from daemon.app import Running
from daemon.blobs import FsStore
from daemon.database import Database
from daemon.dev import ministry_sim
from daemon.messages import RecordInfo
from daemon.packaging import packages
from daemon.packaging.builder import Packager
from daemon.packaging.packages import Package
from daemon.packaging.runner import PackageRunner
from daemon.packaging.submission import Submitter
from daemon.pdf import validation
from daemon.settings import MinistrySettings, Settings
from daemon.stages import ORDER
from producers.ministry import MinistryClient
from tests.integration.conftest import SchoolSystem
from tests.services import StatusEvents

__all__ = ["Ministry", "Packaging", "issue", "ministry", "packaging"]

TOKEN = "ministry-test-token"
_years = itertools.count(2030)


def fresh_year() -> str:
    """An academic year no other test uses, so each test packages only its own records."""
    start = next(_years)
    return f"{start}-{start + 1}"


@dataclass
class Ministry:
    sim: ministry_sim.MinistrySimulator
    url: str

    def settings(self, **overrides: Any) -> MinistrySettings:
        fast = {
            "url": self.url,
            "token": SecretStr(TOKEN),
            "retry_base_ms": 10,
            "retry_cap_ms": 100,
            "poll_base_ms": 10,
            "poll_cap_ms": 50,
            "max_retry_after_s": 0.05,
            "max_attempts": 50,
        }
        return MinistrySettings(**{**fast, **overrides})


@pytest.fixture
async def ministry(settings: Settings, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """A factory of simulators on free ports, with the given faults; all stopped after."""
    runners: list[Any] = []
    roots = validation.load_certificates(settings.signing.trust_roots)

    async def start(**faults: Any) -> Ministry:
        store = tmp_path / f"ministry-{len(runners)}"
        sim = ministry_sim.MinistrySimulator(
            SecretStr(TOKEN), roots, store, ministry_sim.Faults(seed=7, **faults)
        )
        runner = await ministry_sim.serve(sim, "127.0.0.1", 0)
        runners.append(runner)
        port = runner.addresses[0][1]
        return Ministry(sim, f"http://127.0.0.1:{port}")

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Packaging:
    runner: PackageRunner
    packager: Packager
    submitter: Submitter
    blobs: FsStore
    db: Database

    def file(self, package: Package) -> Path:
        """The package's blob, where the `fs` backend keeps it (its documented layout)."""
        assert package.sha256 is not None
        return self.blobs.path(package.sha256)

    def copy(self, package: Package, directory: Path) -> Path:
        """A copy of the package as a local file, to open or change."""
        path = directory / package.file_name
        path.write_bytes(self.file(package).read_bytes())
        return path

    async def swap_container(self, package: Package, path: Path) -> Package:
        """Store `path` as the package's container, as a faulty builder would."""
        sha256 = await self.blobs.put(path.read_bytes())
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE packages SET sha256 = $2, size_bytes = $3 WHERE package_id = $1",
                package.package_id,
                sha256,
                path.stat().st_size,
            )
            return await packages.get(conn, package.package_id)


@pytest.fixture
async def packaging(
    daemon: Running, settings: Settings, tmp_path: Path
) -> AsyncIterator[Callable[[Ministry], Packaging]]:
    """A factory of packagers and submitters beside the running daemon (its DB and HSM)."""
    async with aiohttp.ClientSession() as session:
        made: list[PackageRunner] = []

        def make(ministry: Ministry, **overrides: Any) -> Packaging:
            ministry_settings = ministry.settings(**overrides)
            store = FsStore(settings.store.path)  # the running daemon's store
            packager = Packager(daemon.db, daemon.packages.packager.signing, store)
            client = MinistryClient(session, ministry_settings, store)
            submitter = Submitter(daemon.db, client, ministry_settings, store)
            runner = PackageRunner(daemon.db, packager, submitter, settings.packaging)
            made.append(runner)
            return Packaging(runner, packager, submitter, store, daemon.db)

        yield make
        for runner in made:
            await runner.close()


async def issue(
    school_system: SchoolSystem,
    status: StatusEvents,
    school: str,
    year: str,
    count: int,
) -> list[RecordInfo]:
    """`count` records of `school` for `year`, taken through the three stages, concurrently."""

    async def one() -> RecordInfo:
        info, pdf = school_system.new_record(school)
        info = info.model_copy(update={"academic_year": year})
        digest = hashlib.sha256(pdf).hexdigest()
        sent = await school_system.sign(school, info, ORDER[0], digest, pdf=pdf)
        for stage in (*ORDER[1:], None):
            event = (await status.wait(sent.request_id))[0]
            assert event["state"] != "rejected", event["reason"]
            if stage is None:
                assert event["state"] == "issued"
                return info
            sent = await school_system.sign(school, info, stage, event["document_sha256"])
        raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one() for _ in range(count))))


def states_of(events: Iterable[dict[str, Any]], record_ids: set[str]) -> dict[str, list[str]]:
    """record_id -> the package states announced for it, in arrival order."""
    found: dict[str, list[str]] = {r: [] for r in record_ids}
    for event in events:
        if event["record_id"] in found:
            found[event["record_id"]].append(event["state"])
    return found


# What every record of an accepted package is told, each once, in this order.
TOLD = ["packaged", "submitted", "accepted_by_ministry"]


async def told_each_state_once(status: StatusEvents, record_ids: set[str]) -> None:
    """Wait until every record was told packaged, submitted, accepted, each once."""

    def told(events: list[dict[str, Any]]) -> bool:
        return all(s == TOLD for s in states_of(events, record_ids).values())

    assert told(await status.wait_until(told))
