"""`hocba-signer verify`, `verify-server`, `print`, `ltv renew`: on issued records."""

from __future__ import annotations

import argparse
import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.commands import common

if TYPE_CHECKING:
    from daemon.settings import Settings
    from daemon.verification import basis


def add_parsers(sub: Any) -> None:
    ltv = sub.add_parser("ltv", help="long-term validation").add_subparsers(
        required=True, metavar="COMMAND"
    )
    cmd = ltv.add_parser("renew", help="fresh validation data and a document timestamp")
    cmd.add_argument("--within-days", type=int, help="default: ltv.renew_within_days")
    cmd.add_argument("--school", help="only this school's records")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_ltv_renew)
    cmd = sub.add_parser("verify", help="validate a signed PDF or an .asice package")
    cmd.add_argument("file", type=Path)
    cmd.add_argument(
        "--trust-root",
        type=Path,
        action="append",
        help="trusted root certificate (default: signing.trust_roots)",
    )
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_verify)

    cmd = sub.add_parser("verify-server", help="the public verification page and API")
    cmd.add_argument("--host", help="default: verify_server.host")
    cmd.add_argument("--port", type=int, help="default: verify_server.port (9470)")
    cmd.set_defaults(handler=_verify_server)
    cmd = sub.add_parser("print", help="a printed copy of an issued record, with a QR code")
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--record", required=True)
    cmd.add_argument("--out", type=Path, help="default: <record>-ban-in.pdf")
    cmd.set_defaults(handler=_print_copy)


async def _verify(args: argparse.Namespace) -> int:
    """With a configuration, who signed is the registry's word where the database answers."""
    import os

    from daemon.settings import CONFIG_ENV
    from daemon.verification import basis
    from daemon.verification import report as verify

    settings = common.settings(args) if args.config or not args.trust_root else None
    roots = args.trust_root or (settings.signing.trust_roots if settings else [])
    rules = settings.verification if settings else None
    configured = args.config or os.environ.get(CONFIG_ENV)
    async with AsyncExitStack() as stack:
        registry = await _registry(settings, stack) if settings and configured else None
        if verify.is_package(args.file):
            checked = await asyncio.to_thread(verify.check_package_file, args.file, roots, rules)
            if registry is not None and settings is not None:
                checked = await basis.package(registry, checked, settings.verification)
            package = verify.checked_package_report(checked)
            print(verify.render_package(package, as_json=args.json))
            return verify.exit_code(package)
        record = await asyncio.to_thread(verify.check_record, args.file.read_bytes(), roots, rules)
        if registry is not None and settings is not None:
            record = await basis.record(registry, record, settings.verification)
        report = verify.checked_report(record)
    print(verify.render(report, as_json=args.json))
    return verify.exit_code(report)


async def _registry(settings: Settings, stack: AsyncExitStack) -> basis.SignerRegistry:
    """The registry, read as the verifier role (`database.verifier_dsn`, else `dsn`).

    One that cannot be opened is still returned: each look-up fails, and the report
    notes that the certificates were its basis.
    """
    from daemon.database import Database
    from daemon.errors import DatabaseUnavailable
    from daemon.verification.basis import DatabaseSigners

    db = Database(settings.database.for_verifier())
    try:
        await db.open()
    except DatabaseUnavailable:
        pass
    else:
        stack.push_async_callback(db.close)
    return DatabaseSigners(db)


async def _verify_server(args: argparse.Namespace) -> int:
    from daemon import app
    from daemon.verification import server

    settings = common.settings(args)
    if args.host or args.port is not None:
        update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        section = settings.verify_server.model_copy(update=update)
        settings = settings.model_copy(update={"verify_server": section})
    await common.preflight(settings, rabbitmq=False, mqtt=False)
    stop = asyncio.Event()
    app.install_signal_handlers(stop)
    await server.serve(settings, stop)
    return 0


async def _print_copy(args: argparse.Namespace) -> int:
    import contextlib

    from daemon import blobs
    from daemon.database import Database
    from daemon.verification import printed

    settings = common.settings(args)
    async with contextlib.AsyncExitStack() as stack:
        db = Database(settings.database)
        await db.open()
        stack.push_async_callback(db.close)
        store = await blobs.open_store(settings.store, stack)
        pdf = await printed.make(db, store, settings, args.school, args.record)
    out = args.out or Path(f"{args.record}-ban-in.pdf")
    out.write_bytes(pdf)
    print(out)
    return 0


async def _ltv_renew(args: argparse.Namespace) -> int:
    from daemon.ltv import renewal

    progress = renewal.Shown()
    summary = await renewal.renew_command(
        common.settings(args), args.within_days, args.school, progress
    )
    common.show(summary.as_json(), args.json)
    return 1 if summary.failed else 0
