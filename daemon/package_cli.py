"""`hocba-signer package` and `hocba-signer mock-ministry`: packages from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from daemon import app, ministry_sim, packages, pades
from daemon.errors import ConfigError
from daemon.packages import Package
from daemon.packaging import Packager
from daemon.settings import Settings, read_secret
from daemon.store import FileStore
from daemon.submission import Submitter
from producers.ministry import MinistryClient

log = logging.getLogger(__name__)


async def package(
    settings: Settings, school_id: str, year: str, round_: int, *, submit: bool
) -> dict[str, Any]:
    """Build the round's package and, with `submit`, follow it to the ministry's verdict."""
    async with contextlib.AsyncExitStack() as stack:
        db, pool = await app.open_core(stack, settings)
        store = FileStore(settings.store.path)
        built = await Packager(db, pool, store, settings.packaging.path).build(
            school_id, year, round_
        )
        if built is None:
            return {"package": None, "reason": "no issued records wait for a package"}
        if submit:
            client = await stack.enter_async_context(aiohttp.ClientSession())
            ministry = MinistryClient(client, settings.ministry)
            built = await Submitter(db, ministry, settings.ministry).follow(built)
        async with db.connection() as conn:
            return describe(await packages.get(conn, built.package_id))


def describe(package: Package) -> dict[str, Any]:
    return {
        "package_id": str(package.package_id),
        "school_id": package.school_id,
        "academic_year": package.academic_year,
        "submission_round": package.submission_round,
        "sequence": package.sequence,
        "state": package.state.value,
        "records": package.record_count,
        "sha256": package.sha256,
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
    roots = pades.load_certificates(options.trust_roots)
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
