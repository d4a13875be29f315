"""`hocba-signer package`, the operator's `package-list`, `package-resume` and
`package-reject`, and `hocba-signer mock-ministry`: packages from the command line.

An operator acts only on a package in `attention` (the ministry kept losing its
receipt): resuming sends it back to `submitting` under the same Idempotency-Key, its
lost receipts counted from zero again; rejecting ends it as a ministry rejection does,
its records released for the next package. Each action is a compare-and-set on the
state, a `submission_attempts` row of kind `operator` and an audit trail entry, in one
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from pydantic import SecretStr

from daemon import app, blobs
from daemon.clock import vietnam_now
from daemon.credentials import read_secret
from daemon.database import Database
from daemon.dev import ministry_sim
from daemon.errors import ConfigError, PermanentError
from daemon.messages import Reason
from daemon.packaging import packages
from daemon.packaging.builder import Packager
from daemon.packaging.packages import Package, PackageState
from daemon.packaging.submission import REASON_MESSAGE_CHARS, Submitter
from daemon.pdf import validation
from daemon.settings import Settings
from producers.ministry import MinistryClient

log = logging.getLogger(__name__)

# The reason code of the `rejected_by_ministry` events of a package an operator rejected.
OPERATOR_REJECTED = "rejected_by_operator"


async def package(
    settings: Settings, school_id: str, year: str, round_: int, *, submit: bool
) -> dict[str, Any]:
    """Build the round's package and, with `submit`, follow it to the ministry's verdict."""
    async with contextlib.AsyncExitStack() as stack:
        db, pool = await app.open_core(stack, settings)
        store = await blobs.open_store(settings.store, stack)
        built = await Packager(db, pool, store).build(school_id, year, round_)
        if built is None:
            return {"package": None, "reason": "no issued records wait for a package"}
        if submit:
            client = await stack.enter_async_context(aiohttp.ClientSession())
            ministry = MinistryClient(client, settings.ministry, store)
            built = await Submitter(db, ministry, settings.ministry, store).follow(built)
        async with db.connection() as conn:
            return describe(await packages.get(conn, built.package_id))


async def listing(settings: Settings, state: PackageState, school_id: str | None) -> dict[str, Any]:
    """The packages in `state` (of one school, if given), as `describe` shows them."""
    async with contextlib.AsyncExitStack() as stack:
        db = await _database(stack, settings)
        async with db.connection() as conn:
            found = await packages.in_state(conn, state, school_id)
        return {"packages": [describe(p) for p in found]}


async def resume(
    settings: Settings, package_id: UUID, note: str | None, *, follow: bool
) -> dict[str, Any]:
    """Resume a package in `attention`; with `follow`, take it to the ministry's verdict."""
    async with contextlib.AsyncExitStack() as stack:
        db = await _database(stack, settings)
        package = await resume_package(db, package_id, note)
        if follow:
            store = await blobs.open_store(settings.store, stack)
            client = await stack.enter_async_context(aiohttp.ClientSession())
            ministry = MinistryClient(client, settings.ministry, store)
            package = await Submitter(db, ministry, settings.ministry, store).follow(package)
        return describe(package)


async def reject(settings: Settings, package_id: UUID, reason: str) -> dict[str, Any]:
    """Reject a package in `attention`; its records go into the next package."""
    async with contextlib.AsyncExitStack() as stack:
        db = await _database(stack, settings)
        return describe(await reject_package(db, package_id, reason))


async def resume_package(db: Database, package_id: UUID, note: str | None) -> Package:
    """Back to `submitting` (the same Idempotency-Key); lost receipts count from zero."""
    async with db.transaction() as conn:
        package = await _in_attention(conn, package_id, "resumed")
        package = await packages.move(
            conn, package, PackageState.SUBMITTING, came_from=(PackageState.ATTENTION,)
        )
        await _record(conn, package, "resumed", note)
    log.warning(
        "Package %s resumed by an operator: back to submitting under the same Idempotency-Key.",
        package_id,
    )
    return package


async def reject_package(db: Database, package_id: UUID, reason: str) -> Package:
    """To `rejected` as a ministry rejection: records released, told `rejected_by_ministry`."""
    reason = reason.strip()
    if not reason:
        raise PermanentError("Give the reason for rejecting the package (--reason).")
    message = reason[:REASON_MESSAGE_CHARS]
    async with db.transaction() as conn:
        package = await _in_attention(conn, package_id, "rejected")
        package = await packages.finish(
            conn,
            package,
            PackageState.REJECTED,
            [{"code": OPERATOR_REJECTED, "message": message}],
            0,
            vietnam_now(),
            reason=Reason(code=OPERATOR_REJECTED, message=message),
            came_from=(PackageState.ATTENTION,),
        )
        await _record(conn, package, "rejected", message)
    log.warning(
        "Package %s rejected by an operator: its %d records may go into the next package.",
        package_id,
        package.record_count,
    )
    return package


async def _in_attention(conn: asyncpg.Connection, package_id: UUID, done: str) -> Package:
    try:
        package = await packages.get(conn, package_id)
    except KeyError:
        raise PermanentError(f"No package {package_id}.") from None
    if package.state is not PackageState.ATTENTION:
        raise PermanentError(
            f"Package {package_id} is {package.state.value}: only a package in attention "
            f"can be {done}."
        )
    return package


async def _record(
    conn: asyncpg.Connection, package: Package, outcome: str, text: str | None
) -> None:
    """The operator's action in the submission history and the audit trail."""
    await packages.record_attempt(
        conn, package.package_id, "operator", outcome, receipt_id=package.receipt_id, detail=text
    )
    detail = {
        "from": PackageState.ATTENTION.value,
        "to": package.state.value,
        "receipt_id": package.receipt_id,
        "reason": text,
    }
    await packages.audit(conn, package, f"package_{outcome}_by_operator", detail)


async def _database(stack: contextlib.AsyncExitStack, settings: Settings) -> Database:
    """The database pool alone: operator commands need no HSM."""
    db = Database(settings.database)
    await db.open()
    stack.push_async_callback(db.close)
    return db


def describe(package: Package) -> dict[str, Any]:
    return {
        "package_id": str(package.package_id),
        "school_id": package.school_id,
        "academic_year": package.academic_year,
        "submission_round": package.submission_round,
        "sequence": package.sequence,
        "state": package.state.value,
        "records": package.record_count,
        # The package is the blob named by its sha256; `path` is set only for packages
        # built before packages were blobs.
        "sha256": package.sha256,
        "size_bytes": package.size_bytes,
        "path": package.path,
        "receipt_id": package.receipt_id,
        "attempts": package.attempts,
    }


@dataclass(frozen=True)
class SimulatorOptions:
    host: str
    port: int
    store_dir: Path
    trust_roots: list[Path]
    token: SecretStr
    faults: ministry_sim.Faults


def simulator_token(token_file: Path | None, settings: Settings | None) -> SecretStr:
    """The bearer token the simulator accepts: a file, else the daemon's own ministry token."""
    token = read_secret(None, token_file, "ministry-token")
    if token is None and settings is not None:
        token = settings.ministry.resolved_token()
    if token is None:
        raise ConfigError("No token for the simulator: give --token-file.")
    return token


async def mock_ministry(options: SimulatorOptions, stop: asyncio.Event) -> None:
    roots = validation.load_certificates(options.trust_roots)
    if not roots:
        raise ConfigError("The simulator needs at least one trust root (--trust-root).")
    sim = ministry_sim.MinistrySimulator(options.token, roots, options.store_dir, options.faults)
    runner = await ministry_sim.serve(sim, options.host, options.port)
    try:
        log.info("Ministry simulator on %s:%s, storing in %s.", options.host, options.port,
                 options.store_dir)  # fmt: skip
        await stop.wait()
    finally:
        await runner.cleanup()
