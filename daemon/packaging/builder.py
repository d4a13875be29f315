"""Packaging: the issued records of a (school, year, round) into one sealed ASiC-E file.

`build` reserves the waiting records in a new package (or takes the round's package
that was created but not yet sent), writes the container, seals its manifest with the
school's seal key, and stores `built` with a `packaged` event per record, in one
transaction. The container is streamed into the blob store as it is written, and the
package row keeps its digest. A crash in between leaves a `building` package with its
records and its signing time; building it again yields the same bytes, the same blob.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from daemon.blobs import BlobStore
from daemon.clock import Clock, vietnam_now
from daemon.database import Database
from daemon.errors import ConcurrentUpdate, UnknownSigner
from daemon.hsm import KeyRef
from daemon.metrics import PACKAGE_BUILD_DURATION, PACKAGES_BUILT
from daemon.packaging import container, packages
from daemon.packaging.packages import Package, PackageState
from daemon.stages import State

log = logging.getLogger(__name__)


class CmsSigning(Protocol):
    async def sign_cms(self, key: KeyRef, data: bytes, signing_time: datetime) -> bytes: ...


@dataclass(frozen=True)
class Packager:
    db: Database
    signing: CmsSigning
    blobs: BlobStore
    clock: Clock = vietnam_now

    async def build(self, school_id: str, year: str, round_: int) -> Package | None:
        """The round's package holding every waiting record, built; None if none wait."""
        async with self.db.transaction() as conn:
            await packages.lock_round(conn, school_id, year, round_)
            package = await packages.open_package(conn, school_id, year, round_)
            if package is None:
                waiting = await packages.waiting(conn, school_id, year, round_)
                if not waiting:
                    return None
                # Whole seconds: what CMS signing-time keeps, so a rebuild signs the same.
                signed_at = self.clock().replace(microsecond=0)
                package = await packages.create(conn, school_id, year, round_, waiting, signed_at)
                log.info(
                    "Created package %s for school %s, %s round %d: %d records.",
                    package.package_id,
                    school_id,
                    year,
                    round_,
                    package.record_count,
                )
        if package.state is PackageState.BUILDING:
            package = await self.write(package)
        return package

    async def write(self, package: Package) -> Package:
        """Write and seal a `building` package, then store it as `built`."""
        started = time.perf_counter()
        async with self.db.connection() as conn:
            content = await packages.content(conn, package)
            seal = await packages.seal_key(conn, package.school_id)
        if seal is None:
            raise UnknownSigner(f"School {package.school_id} has no active seal key.")
        key = KeyRef(package.school_id, *seal)
        content = await container.with_record_xml(content, self.blobs)
        signature = await self.signing.sign_cms(key, content.manifest_bytes(), package.signing_time)
        written = await self.blobs.put_stream(
            container.container_chunks(content, signature, self.blobs)
        )
        try:
            async with self.db.transaction() as conn:
                # `path` stays NULL: the package is the blob named by its sha256.
                sets = {"sha256": written.sha256, "size_bytes": written.size_bytes}
                package = await packages.move(
                    conn, package, PackageState.BUILT, sets, came_from=(PackageState.BUILDING,)
                )
                await packages.tell_records(conn, package, State.PACKAGED, self.clock())
        except ConcurrentUpdate:
            # Another instance built it first; the bytes it wrote are the same as ours.
            async with self.db.connection() as conn:
                return await packages.get(conn, package.package_id)
        elapsed = time.perf_counter() - started
        PACKAGES_BUILT.labels(str(package.submission_round)).inc()
        PACKAGE_BUILD_DURATION.observe(elapsed)
        log.info(
            "Built package %s (%d records, %d bytes) in %.3fs.",
            package.package_id,
            package.record_count,
            written.size_bytes,
            elapsed,
        )
        return package
