"""Two instances on "two machines": separate local folders, no shared one; they share
only PostgreSQL, RabbitMQ and the S3 object store (a real SeaweedFS)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from daemon import app, blobs
from daemon.packaging.packages import PackageState
from daemon.pdf import validation
from daemon.settings import Settings, StoreSettings
from daemon.stages import ORDER, Stage
from tests.integration.conftest import SchoolSystem
from tests.integration.package_fixtures import *  # noqa: F403
from tests.integration.package_fixtures import Ministry, fresh_year, told_each_state_once
from tests.s3_server import S3Server, s3, s3_server  # noqa: F401
from tests.services import StatusEvents

SCHOOL = "31000103"


def machine(
    settings: Settings, name: str, disk: Path, store: StoreSettings, sim: Ministry
) -> Settings:
    """An instance whose only local folders are its own, under `disk`."""
    local = store.model_copy(update={"path": disk / "documents"})
    return settings.model_copy(
        update={
            "instance": f"{settings.instance}-{name}",
            "store": local,
            "ministry": sim.settings(),
            "packaging": settings.packaging.model_copy(update={"path": disk / "packages"}),
        }
    )


@contextlib.asynccontextmanager
async def running(one: Settings) -> AsyncIterator[app.Running]:
    stop = asyncio.Event()
    async with app.started(one, stop) as instance:
        yield instance
        stop.set()


async def _stage(
    school_system: SchoolSystem, status: StatusEvents, info: Any, stage: Stage, digest: str,
    pdf: bytes | None = None,
) -> dict[str, Any]:  # fmt: skip
    sent = await school_system.sign(SCHOOL, info, stage, digest, pdf=pdf)
    event = (await status.wait(sent.request_id))[0]
    assert event["state"] == stage.state.value, event["reason"]
    return event


async def test_a_record_and_a_package_move_between_instances_through_the_object_store(
    settings: Settings,
    school_system: SchoolSystem,
    status: StatusEvents,
    ministry,
    s3_server: S3Server,  # noqa: F811
    s3: StoreSettings,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Given two instances, each with its own disk, sharing only the services and a bucket
    sim: Ministry = await ministry()
    year = fresh_year()
    a = machine(settings, "a", tmp_path / "machine-a", s3, sim)
    b = machine(settings, "b", tmp_path / "machine-b", s3, sim)
    infos = []
    for _ in range(2):
        info, pdf = school_system.new_record(SCHOOL)
        infos.append((info.model_copy(update={"academic_year": year}), pdf))

    # When each record is started (teacher) on A alone ...
    teacher_signed = []
    async with running(a):
        for info, pdf in infos:
            digest = hashlib.sha256(pdf).hexdigest()
            event = await _stage(school_system, status, info, ORDER[0], digest, pdf)
            teacher_signed.append(event)

    # ... and finished (principal, seal) on B alone, which never saw A's disk
    issued = []
    async with running(b) as on_b:
        for (info, _), event in zip(infos, teacher_signed, strict=True):
            event = await _stage(school_system, status, info, ORDER[1], event["document_sha256"])
            event = await _stage(school_system, status, info, ORDER[2], event["document_sha256"])
            issued.append(event["document_sha256"])
        # And B builds the round's package, without submitting it
        built = await on_b.packages.package(SCHOOL, year, 1, submit=False)
    assert built is not None and built.state is PackageState.BUILT
    assert built.path is None and built.sha256 is not None

    # And A, started again, submits the package B built
    async with running(a) as on_a:
        final = await on_a.packages.follow(built)

    # Then the ministry accepted it, with both records, each told every package state
    assert final.state is PackageState.ACCEPTED
    assert list(sim.sim.by_key) == [str(built.package_id)]
    await told_each_state_once(status, {info.record_id for info, _ in infos})
    # And every issued PDF, read from the bucket, carries three valid signatures
    roots = validation.load_certificates(settings.signing.trust_roots)
    async with contextlib.AsyncExitStack() as stack:
        store = await blobs.open_store(s3, stack)
        for digest in issued:
            pdf = await store.get(digest)
            reports = await asyncio.to_thread(validation.validate_pdf, pdf, roots, expected=3)
            assert [r.bottom_line for r in reports] == [True, True, True]
        assert await store.exists(built.sha256)
    # And nothing was written to either machine's local folders: the bucket holds it all
    for disk in ("machine-a", "machine-b"):
        assert [p for p in (tmp_path / disk).rglob("*") if p.is_file()] == []
    async with s3_server.client() as client:
        listed: Any = await client.list_objects_v2(Bucket=s3.s3.bucket)  # type: ignore[attr-defined]
    keys = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    assert {built.sha256, *issued} <= keys
