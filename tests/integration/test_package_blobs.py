"""Packages are blobs: a corrupt one is never sent, one from before blobs is taken in."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from daemon.app import Running
from daemon.errors import StoreCorrupt
from daemon.packaging import packages
from daemon.packaging.packages import PackageState
from tests.integration.conftest import SchoolSystem
from tests.integration.package_fixtures import *  # noqa: F403
from tests.integration.package_fixtures import Ministry, Packaging, fresh_year, issue
from tests.services import StatusEvents

SCHOOL = "31000101"


async def test_a_package_corrupted_in_the_store_is_never_sent_until_restored(
    daemon: Running, school_system: SchoolSystem, status: StatusEvents, ministry, packaging
) -> None:
    # Given a built package whose blob then rots on disk
    year = fresh_year()
    await issue(school_system, status, SCHOOL, year, 2)
    sim: Ministry = await ministry()
    pkg: Packaging = packaging(sim)
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None
    good = pkg.file(built).read_bytes()
    pkg.file(built).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))

    # When it is submitted, it is refused loudly and the ministry receives nothing
    with pytest.raises(StoreCorrupt):
        await pkg.submitter.follow(built)
    assert sim.sim.by_key == {}
    async with daemon.db.connection() as conn:
        assert (await packages.get(conn, built.package_id)).state is PackageState.SUBMITTING

    # Then, once an operator restored the blob, it goes through
    pkg.file(built).write_bytes(good)
    assert (await pkg.submitter.follow(built)).state is PackageState.ACCEPTED


async def test_a_package_built_as_a_file_before_blobs_is_taken_into_the_store(
    daemon: Running,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    packaging,
    tmp_path: Path,
) -> None:
    # Given a package as the previous version left it: a local file named in its row
    year = fresh_year()
    await issue(school_system, status, SCHOOL, year, 1)
    sim: Ministry = await ministry()
    pkg: Packaging = packaging(sim)
    built = await pkg.runner.package(SCHOOL, year, 1, submit=False)
    assert built is not None and built.sha256 is not None
    legacy = tmp_path / "packages" / SCHOOL / built.file_name
    legacy.parent.mkdir(parents=True)
    await asyncio.to_thread(shutil.move, pkg.file(built), legacy)
    async with daemon.db.connection() as conn:
        await conn.execute(
            "UPDATE packages SET path = $2 WHERE package_id = $1", built.package_id, str(legacy)
        )
        built = await packages.get(conn, built.package_id)
    assert not await pkg.blobs.exists(built.sha256)

    # When it is submitted
    final = await pkg.submitter.follow(built)

    # Then it was stored as its blob, and the ministry accepted that very container
    assert final.state is PackageState.ACCEPTED
    assert pkg.file(built).read_bytes() == legacy.read_bytes()
