"""A batch's PDFs in one blob write, durable before the rows that name them; a PDF the
store cannot take fails only its own request (real database, HSM and disk). Both ways a
PDF is stored: by the daemon (`put_many`, as for a remote store) and, on the `fs`
store, by the HSM worker that signed it (`SignJob.keep`)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from daemon import app
from daemon.blobs import FsStore, Hashed
from daemon.dev import env as devenv
from daemon.documents import DocumentSource
from daemon.errors import StoreCorrupt, StoreUnavailable
from daemon.messages import RecordInfo, SignRequest, decode_sign_request
from daemon.outcomes import Outcome
from daemon.pipeline import Pipeline
from daemon.settings import Settings
from daemon.stages import Stage, State
from producers.school_system import sign_request
from tests.integration.conftest import SchoolSystem

SCHOOL = "31000103"


class Counted(FsStore):
    """The fs store, counting the blobs of each write and read the daemon itself makes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[int] = []
        self.reads: list[int] = []

    async def get_many(self, digests: Sequence[str]) -> list[bytes | Exception]:
        self.reads.append(len(digests))
        return await super().get_many(digests)

    async def put_many(self, blobs: Sequence[bytes | Hashed]) -> list[str]:
        self.writes.append(len(blobs))
        return await super().put_many(blobs)


class Refusing(Counted):
    """A disk that refuses any write holding one PDF; every write goes through
    `put_many`, as to a remote store (no `local_root`)."""

    refused: bytes = b""

    @property
    def local_root(self) -> str | None:
        return None

    async def put_many(self, blobs: Sequence[bytes | Hashed]) -> list[str]:
        if self.refused in [b.data if isinstance(b, Hashed) else b for b in blobs]:
            self.writes.append(len(blobs))
            raise StoreUnavailable("Cannot store a blob: No space left on device.")
        return await super().put_many(blobs)


@contextlib.asynccontextmanager
async def pipeline_on(settings: Settings, store: FsStore) -> AsyncIterator[Pipeline]:
    async with contextlib.AsyncExitStack() as stack:
        db, pool = await app.open_core(stack, settings)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield Pipeline(db, pool, store, DocumentSource(http, settings.signing))


def _request(
    dev_env: devenv.DevEnv, info: RecordInfo, stage: Stage, digest: str, pdf: bytes | None
) -> SignRequest:
    signer = dev_env.signer_for(SCHOOL, stage.value)
    token = dev_env.consent_signer(SCHOOL).mint(signer, stage, [(info.record_id, digest)])
    key, body, _ = sign_request(SCHOOL, info, stage, signer, token, pdf, None)
    return decode_sign_request(body, key)


def _teacher_requests(
    school_system: SchoolSystem, dev_env: devenv.DevEnv, count: int
) -> list[tuple[SignRequest, bytes]]:
    requests = []
    for _ in range(count):
        info, pdf = school_system.new_record(SCHOOL)
        digest = hashlib.sha256(pdf).hexdigest()
        requests.append((_request(dev_env, info, Stage.HOMEROOM_TEACHER, digest, pdf), pdf))
    return requests


async def test_a_pdf_the_store_refuses_fails_only_its_request(
    settings: Settings, dev_env: devenv.DevEnv, school_system: SchoolSystem
) -> None:
    # Given a batch of three teacher's requests, and a store that refuses the second PDF
    batch = _teacher_requests(school_system, dev_env, 3)
    store = Refusing(settings.store.path)
    store.refused = batch[1][1]
    async with pipeline_on(settings, store) as pipeline:
        # When the batch is handled
        results = await pipeline.handle_many([request for request, _ in batch])
        async with pipeline.db.connection() as conn:
            rows = {
                row["record_id"]: row["n"]
                for row in await conn.fetch(
                    "SELECT record_id, count(*) AS n FROM signatures WHERE school_id = $1 "
                    "AND record_id = ANY($2::text[]) GROUP BY record_id",
                    SCHOOL,
                    [request.record.record_id for request, _ in batch],
                )
            }

    # Then the batch was one write, retried alone per request once it failed
    assert store.writes == [6, 2, 2, 2]
    # and the refused one failed alone, transiently (retried), leaving no signature row
    assert isinstance(results[1], StoreUnavailable)
    assert batch[1][0].record.record_id not in rows
    # while its neighbours were signed, both their versions in the store
    for n in (0, 2):
        outcome = results[n]
        assert isinstance(outcome, Outcome) and outcome.event.state is State.SIGNED_BY_TEACHER
        request, pdf = batch[n]
        assert rows[request.record.record_id] == 1
        assert await store.get(hashlib.sha256(pdf).hexdigest()) == pdf
        signed = await store.get(outcome.event.document_sha256 or "")
        assert signed.startswith(pdf) and len(signed) > len(pdf)


async def test_a_batch_is_stored_in_one_write(
    settings: Settings, dev_env: devenv.DevEnv, school_system: SchoolSystem
) -> None:
    batch = _teacher_requests(school_system, dev_env, 4)
    store = Refusing(settings.store.path)
    async with pipeline_on(settings, store) as pipeline:
        results = await pipeline.handle_many([request for request, _ in batch])
    assert all(isinstance(r, Outcome) and not r.rejected for r in results)
    assert store.writes == [8]  # each teacher's version and its signed one


@pytest.mark.parametrize("damage", [StoreUnavailable, StoreCorrupt], ids=["lost", "changed"])
@pytest.mark.parametrize("reader", [Refusing, Counted], ids=["daemon_reads", "workers_read"])
async def test_a_held_version_lost_or_changed_fails_only_its_request(
    settings: Settings,
    dev_env: devenv.DevEnv,
    school_system: SchoolSystem,
    reader: type[Counted],
    damage: type[Exception],
) -> None:
    # Given two records signed by their teachers, one of whose signed PDF is then lost or
    # changed on disk (read by the daemon, or by the HSM workers themselves on the fs store)
    batch = _teacher_requests(school_system, dev_env, 2)
    store = reader(settings.store.path)
    async with pipeline_on(settings, store) as pipeline:
        first = await pipeline.handle_many([request for request, _ in batch])
        held = [r.event.document_sha256 or "" for r in first if isinstance(r, Outcome)]
        assert len(held) == 2
        path = store.path(held[0])
        if damage is StoreUnavailable:
            path.unlink()
        else:
            path.write_bytes(path.read_bytes().replace(b"%%EOF", b"%%EOX", 1))
        # When both principals' requests come in one batch
        principals = [
            _request(dev_env, request.record, Stage.PRINCIPAL, digest, None)
            for (request, _), digest in zip(batch, held, strict=True)
        ]
        results = await pipeline.handle_many(principals)

    # Then the versions were read by whoever should: the daemon in one call, or not at all
    assert [n for n in store.reads if n] == ([2] if reader is Refusing else [])
    # and the damaged one was not signed: it failed alone, transiently (retried), as lost
    # or as corrupt, and the other was signed on its version
    assert type(results[0]) is damage
    outcome = results[1]
    assert isinstance(outcome, Outcome) and outcome.event.state is State.SIGNED_BY_PRINCIPAL
    signed = await store.get(outcome.event.document_sha256 or "")
    assert signed.startswith(await store.get(held[1]))


def _block(store: FsStore, digest: str) -> None:
    """The blob's directory is a file: the disk refuses that one blob (even to root)."""
    directory = store.path(digest).parent
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.write_bytes(b"")


async def test_the_workers_store_what_they_sign_before_any_row_names_it(
    settings: Settings, dev_env: devenv.DevEnv, school_system: SchoolSystem
) -> None:
    # Given a batch of three teacher's requests on the fs store, which the workers write
    # themselves, and a disk that cannot take the second one's version
    own = Counted(settings.store.path)
    batch = _teacher_requests(school_system, dev_env, 3)
    while own.path(hashlib.sha256(batch[1][1]).hexdigest()).parent.exists():
        batch = _teacher_requests(school_system, dev_env, 3)  # its directory holds others
    refused = hashlib.sha256(batch[1][1]).hexdigest()
    _block(own, refused)
    try:
        async with pipeline_on(settings, own) as pipeline:
            # When the batch is handled
            results = await pipeline.handle_many([request for request, _ in batch])
            async with pipeline.db.connection() as conn:
                rows = await conn.fetch(
                    "SELECT record_id FROM signatures WHERE school_id = $1 "
                    "AND record_id = ANY($2::text[])",
                    SCHOOL,
                    [request.record.record_id for request, _ in batch],
                )
    finally:
        own.path(refused).parent.unlink()

    # Then the daemon wrote nothing itself
    assert own.writes == []
    # and the one the disk refused failed alone, transiently, with no signature row
    assert isinstance(results[1], StoreUnavailable)
    assert {row["record_id"] for row in rows} == {batch[n][0].record.record_id for n in (0, 2)}
    # and each neighbour's two versions are in the store, the signed one extending it
    for n in (0, 2):
        outcome = results[n]
        assert isinstance(outcome, Outcome) and outcome.event.state is State.SIGNED_BY_TEACHER
        pdf = batch[n][1]
        assert await own.get(hashlib.sha256(pdf).hexdigest()) == pdf
        signed = await own.get(outcome.event.document_sha256 or "")
        assert signed.startswith(pdf) and len(signed) > len(pdf)
