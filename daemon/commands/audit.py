"""`hocba-signer audit verify|anchor` and `hocba-signer db grant`: the trail and the roles.

`audit verify` exits 0 when the trail is whole, 1 when anything is broken (each break
named, the first of each chain), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import datetime
from typing import Any

from daemon import migrate
from daemon.clock import VIETNAM
from daemon.database import connect_once
from daemon.errors import ConfigError
from daemon.settings import Settings, load_settings

# The commands' own imports are inside them: the parser is built by every process,
# the HSM workers' included.


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the audit trail: verify it, anchor it").add_subparsers(
        required=True, metavar="AUDIT_COMMAND"
    )
    cmd = audit.add_parser("verify", help="walk the chains and anchors; cross-check them")
    cmd.add_argument("--school", help="only this school's chain")
    cmd.add_argument("--since", type=_date, help="entries and documents from this date")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_verify)
    cmd = audit.add_parser("anchor", help="timestamp the chains' heads now (signing.tsa_url)")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_anchor)

    db = sub.add_parser("db", help="database roles").add_subparsers(
        required=True, metavar="DB_COMMAND"
    )
    cmd = db.add_parser("grant", help="make a login role a member of a service's group role")
    cmd.add_argument("--role", required=True, help="an existing login role")
    cmd.add_argument("--as", dest="service", required=True, choices=sorted(migrate.ROLES))
    cmd.set_defaults(handler=_grant)


def _date(text: str) -> datetime:
    try:
        day = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (YYYY-MM-DD)") from exc
    return day if day.tzinfo else day.replace(tzinfo=VIETNAM)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


async def _verify(args: argparse.Namespace) -> int:
    from daemon import blobs
    from daemon.audit import verify
    from daemon.pdf.validation import load_certificates

    settings = _settings(args)
    roots = load_certificates(settings.signing.trust_roots)
    async with contextlib.AsyncExitStack() as stack:
        store = await blobs.open_store(settings.store, stack)
        conn = await connect_once(settings.database)
        stack.push_async_callback(conn.close)
        report = await verify.verify(conn, store, roots, school_id=args.school, since=args.since)
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False))
    else:
        verdict = "whole" if report.ok else f"BROKEN in {len(report.breaks)} places"
        print(
            f"Audit trail {verdict}: {report.chains} chains, {report.entries} entries, "
            f"{report.anchors} anchors, {report.documents} documents."
        )
        for found in report.breaks:
            print(f"  {found.code}: {found.message}", file=sys.stdout)
    return 0 if report.ok else 1


async def _anchor(args: argparse.Namespace) -> int:
    import aiohttp

    from daemon.audit import anchors
    from daemon.ltv.timestamps import TsaClient

    settings = _settings(args)
    if not settings.signing.tsa_url:
        raise ConfigError("Anchors need a timestamp authority: set signing.tsa_url.")
    async with aiohttp.ClientSession() as client:
        conn = await connect_once(settings.database)
        try:
            async with conn.transaction():
                made = await anchors.anchor(conn, TsaClient(client, settings.signing), "manual")
        finally:
            await conn.close()
    result = {"anchor_id": made.anchor_id if made else None, "chains": made.heads if made else 0}
    print(
        json.dumps(result)
        if args.json
        else f"Anchor {result['anchor_id']}: {result['chains']} chains."
    )
    return 0


async def _grant(args: argparse.Namespace) -> int:
    settings = _settings(args)
    conn = await connect_once(settings.database.for_migrations())
    try:
        await migrate.grant(conn, args.role, args.service)
    finally:
        await conn.close()
    print(f"{args.role} is a member of {migrate.ROLES[args.service]}.")
    return 0
