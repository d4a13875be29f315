"""`hocba-signer school|signer|consent-key …`: the registry from the command line.

Each command opens what it needs (the database; the token, read in a child process,
for signers), makes its change in one transaction with its audit entry, and returns
what it did as a dict for `--json`. `signer import` is all or nothing: every line is
checked first (its syntax, its school, its key and certificate in the token), every
bad line is reported with its number, and if there is one, nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from daemon.clock import Clock, vietnam_now
from daemon.consent import Alg, ConsentKey
from daemon.database import Database
from daemon.errors import HocbaError, InvalidMessage, PermanentError, UnknownSchool
from daemon.registry import checks, csvfile, keyring, schools, signers, token
from daemon.registry.csvfile import LineError, SignerLine
from daemon.registry.signers import Registration
from daemon.settings import Settings
from daemon.stages import Stage


def operator() -> str:
    """Who ran the command, for the audit trail: the login name, not a person's name."""
    try:
        return getpass.getuser()
    except OSError:
        return "unknown"


@contextlib.asynccontextmanager
async def _transaction(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    db = Database(settings.database)
    await db.open()
    try:
        async with db.transaction() as conn:
            yield conn
    finally:
        await db.close()


async def school_add(
    settings: Settings,
    school_id: str,
    name: str,
    alg: Alg,
    key_file: Path | None,
    generate_to: Path | None,
) -> dict[str, Any]:
    key = _consent_key(alg, key_file, generate_to)
    async with _transaction(settings) as conn:
        await schools.add(conn, school_id, name, key, operator())
    report = {"school_id": school_id, "name": name, "consent_alg": alg}
    report["consent_key"] = keyring.fingerprint(key)
    if generate_to:
        report["school_system_key_file"] = str(generate_to)
    return report


async def school_list(settings: Settings) -> dict[str, Any]:
    async with _transaction(settings) as conn:
        return {"schools": await schools.listing(conn)}


async def school_show(settings: Settings, school_id: str) -> dict[str, Any]:
    async with _transaction(settings) as conn:
        return await schools.show(conn, school_id)


async def consent_key_rotate(
    settings: Settings,
    school_id: str,
    alg: Alg,
    key_file: Path | None,
    generate_to: Path | None,
    grace: timedelta,
    clock: Clock = vietnam_now,
) -> dict[str, Any]:
    key = _consent_key(alg, key_file, generate_to)
    async with _transaction(settings) as conn:
        old, new = await schools.rotate_key(conn, school_id, key, grace, clock(), operator())
    report = {"school_id": school_id, "key": new.describe(), "previous_key": old.describe()}
    if generate_to:
        report["school_system_key_file"] = str(generate_to)
    return report


async def signer_add(
    settings: Settings,
    school_id: str,
    signer_id: str,
    stage: Stage,
    *,
    reactivate: bool = False,
    clock: Clock = vietnam_now,
) -> dict[str, Any]:
    line = SignerLine(0, school_id, signer_id, stage)
    async with _transaction(settings) as conn:
        if not await signers.registered_schools(conn, [school_id]):
            raise UnknownSchool(f"School {school_id} is not registered (hocba-signer school add).")
    label = checks.key_label(school_id, signer_id)
    held = await token.read_labels(settings.hsm, [label])
    checked = [_registration(settings, line, label, held[label], clock())]
    async with _transaction(settings) as conn:
        [change] = await signers.register(conn, checked, operator(), reactivate=reactivate)
        [listed] = [
            s
            for s in await signers.listing(conn, school_id, stage, inactive=True)
            if s["signer_id"] == signer_id
        ]
    return {"school_id": school_id, "change": str(change), **listed}


async def signer_import(
    settings: Settings, csv_path: Path, school_id: str | None, clock: Clock = vietnam_now
) -> dict[str, Any]:
    """Check every line, then register all of them, or none; `applied` says which."""
    text = await asyncio.to_thread(csv_path.read_text, "utf-8-sig")
    lines, errors = csvfile.parse(text, school_id)
    report: dict[str, Any] = {"file": str(csv_path), "lines": len(lines) + len(errors)}
    async with _transaction(settings) as conn:
        known = await signers.registered_schools(conn, sorted({ln.school_id for ln in lines}))
    unknown = [ln for ln in lines if ln.school_id not in known]
    errors += [_line_error(ln, UnknownSchool(f"school {ln.school_id} is not registered"))
               for ln in unknown]  # fmt: skip
    lines = [ln for ln in lines if ln.school_id in known]
    checked, problems = await _checked(settings, lines, clock)
    errors = sorted([*errors, *problems], key=lambda e: e.line)
    if errors:
        return {**report, "applied": False, "errors": [_describe(e) for e in errors]}
    async with _transaction(settings) as conn:
        changes = await signers.register(conn, checked, operator())
        detail = {
            "file_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "signers": len(checked),
            "operator": operator(),
        }
        for school in sorted({s.school_id for s in checked}):
            await schools.audit(conn, school, "signers_imported", detail)
    counts = {str(c): changes.count(c) for c in signers.Change}
    return {**report, "applied": True, **counts, "errors": []}


async def signer_deactivate(
    settings: Settings,
    school_id: str,
    signer_id: str,
    reason: str | None,
    clock: Clock = vietnam_now,
) -> dict[str, Any]:
    async with _transaction(settings) as conn:
        changed = await signers.deactivate(conn, school_id, signer_id, reason, clock(), operator())
    return {"school_id": school_id, "signer_id": signer_id, "active": False, "changed": changed}


async def signer_list(
    settings: Settings, school_id: str, stage: Stage | None, inactive: bool
) -> dict[str, Any]:
    async with _transaction(settings) as conn:
        listed = await signers.listing(conn, school_id, stage, inactive)
    return {"school_id": school_id, "signers": listed}


async def _checked(
    settings: Settings, lines: Sequence[SignerLine], clock: Clock
) -> tuple[list[Registration], list[LineError]]:
    """Each line's signer read from the token and checked; the fit ones, and the errors."""
    if not lines:
        return [], []
    labels = {ln: checks.key_label(ln.school_id, ln.signer_id) for ln in lines}
    held = await token.read_labels(settings.hsm, list(labels.values()))
    now = clock()
    fit: list[Registration] = []
    errors: list[LineError] = []
    for line, label in labels.items():
        try:
            fit.append(_registration(settings, line, label, held[label], now))
        except PermanentError as exc:
            errors.append(_line_error(line, exc))
    return fit, errors


def _registration(
    settings: Settings, line: SignerLine, label: str, held: token.LabelContents, now: datetime
) -> Registration:
    """The signer of `line`, checked against what the token holds under its label."""
    cert = checks.check_signer(line.school_id, line.stage, label, held, now, settings.verification)
    token_label = settings.hsm.token_label
    return Registration(line.school_id, line.signer_id, line.stage, token_label, label, cert)


def _line_error(line: SignerLine, error: HocbaError) -> LineError:
    return LineError(line.line, line.signer_id, error.code, error.message)


def _describe(error: LineError) -> dict[str, Any]:
    return {
        "line": error.line,
        "signer_id": error.signer_id,
        "code": error.code,
        "message": str(error),
    }


def _consent_key(alg: Alg, key_file: Path | None, generate_to: Path | None) -> ConsentKey:
    if (key_file is None) == (generate_to is None):
        raise InvalidMessage("Give exactly one of --consent-key-file and --generate-consent-key.")
    if key_file is not None:
        return keyring.read_key_file(alg, key_file)
    assert generate_to is not None
    try:
        return keyring.generate_key_file(alg, generate_to)
    except FileExistsError as exc:
        raise InvalidMessage(f"{generate_to} exists; it is never overwritten.") from exc
