"""`hocba-signer`: the command line, and the other composition root beside app.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from daemon.errors import HocbaError

if TYPE_CHECKING:
    from daemon.settings import Settings

log = logging.getLogger("hocba_signer")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _logging(args.log_level)
    try:
        return int(asyncio.run(args.handler(args)) or 0)
    except HocbaError as exc:
        print(f"hocba-signer: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace) -> Settings:
    # Imported here, like every command's module: the HSM worker processes re-import
    # this entry point (multiprocessing's spawn), and should stay small.
    from daemon.settings import load_settings

    return load_settings(args.config)


async def _run(args: argparse.Namespace) -> int:
    from daemon import app

    settings = _settings(args)
    # MQTT may come later: the outbox keeps its events until the broker is back.
    await _preflight(settings, mqtt=False)
    stop = asyncio.Event()
    app.install_signal_handlers(stop)
    await app.run(settings, stop)
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    from daemon import migrate
    from daemon.database import connect_once

    settings = _settings(args)
    settings = settings.model_copy(update={"database": settings.database.for_migrations()})
    await _preflight(settings, rabbitmq=False, mqtt=False)
    conn = await connect_once(settings.database)
    try:
        applied = await migrate.migrate(conn)
    finally:
        await conn.close()
    print(json.dumps({"applied": applied}))
    return 0


async def _dev_init(args: argparse.Namespace) -> int:
    from daemon.dev import env as devenv
    from daemon.dev import services

    settings = services.dev_settings(args.dir)
    await _preflight(settings, rabbitmq=False, mqtt=False, database_may_be_missing=True)
    env = await devenv.init(
        args.dir,
        args.schools,
        services_port=args.services_port,
        daemon_role=devenv.DEV_DAEMON_ROLE,
    )
    report = {
        "config": str(env.config_path),
        "trust_root": str(env.settings.signing.trust_roots[0]),
        "token_label": env.settings.hsm.token_label,
        "schools": {
            school: {
                stage: [
                    s.signer_id for s in env.signers if s.school_id == school and s.stage == stage
                ]
                for stage in ("homeroom_teacher", "principal", "school_seal")
            }
            for school in env.schools
        },
    }
    _print(report, args.json)
    return 0


async def _dev_revoke(args: argparse.Namespace) -> int:
    from daemon.database import connect_once
    from daemon.dev import env as devenv
    from daemon.dev import pki_services

    base = args.dir.resolve()
    settings = devenv.load_settings(base / devenv.CONFIG_NAME)
    conn = await connect_once(settings.database)
    try:
        serial = await conn.fetchval(
            "SELECT cert_serial FROM signers WHERE school_id = $1 AND signer_id = $2",
            args.school,
            args.signer,
        )
        if serial is None:
            print(f"No signer {args.signer} in school {args.school}.", file=sys.stderr)
            return 1
        revoked = pki_services.revoke(base / "pki", serial)
        # Dev only: forget cached answers, so every instance sees it now, not at nextUpdate.
        await conn.execute("DELETE FROM certificate_status WHERE serial = $1", serial)
    finally:
        await conn.close()
    _print(
        {"school": args.school, "signer": args.signer, "serial": serial, "newly": revoked},
        args.json,
    )
    return 0


async def _dev_consent(args: argparse.Namespace) -> int:
    from daemon.dev import env as devenv
    from daemon.stages import Stage

    signer = devenv.load_consent_signer(args.dir.resolve(), args.school)
    print(signer.mint(args.signer, Stage(args.stage), [(args.record, args.digest)], args.ttl))
    return 0


async def _publish(args: argparse.Namespace) -> int:
    from producers import publish

    result = await publish.publish_file(args)
    _print(result, True)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from daemon.dev import demo, services

    # The machine's services if they serve, else private ones (HOCBA_SERVICES).
    settings = services.dev_settings(args.dir)
    async with services.chosen_services(settings, args.dir / "services") as endpoints:
        with services.environment(endpoints.overrides("hocba") if endpoints.private else {}):
            summary = await demo.run(args.dir, args.records, args.schools, args.output_dir)
    if not args.json:
        print(
            f"{summary['issued']} of {summary['records']} records issued, "
            f"{summary['rejected']} rejected, in {summary['elapsed_s']} s.",
            file=sys.stderr,
        )
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if summary["issued"] == summary["records"] else 1


async def _verify(args: argparse.Namespace) -> int:
    from daemon.verification import report as verify

    settings = _settings(args) if args.config or not args.trust_root else None
    roots = args.trust_root or (settings.signing.trust_roots if settings else [])
    rules = settings.verification if settings else None
    if verify.is_package(args.file):
        package = await asyncio.to_thread(verify.package_report, args.file, roots, rules)
        print(verify.render_package(package, as_json=args.json))
        return verify.exit_code(package)
    report = await asyncio.to_thread(verify.report, args.file.read_bytes(), roots, rules)
    print(verify.render(report, as_json=args.json))
    return verify.exit_code(report)


async def _verify_server(args: argparse.Namespace) -> int:
    from daemon import app
    from daemon.verification import server

    settings = _settings(args)
    if args.host or args.port is not None:
        update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        section = settings.verify_server.model_copy(update=update)
        settings = settings.model_copy(update={"verify_server": section})
    await _preflight(settings, rabbitmq=False, mqtt=False)
    stop = asyncio.Event()
    app.install_signal_handlers(stop)
    await server.serve(settings, stop)
    return 0


async def _print_copy(args: argparse.Namespace) -> int:
    import contextlib

    from daemon import blobs
    from daemon.database import Database
    from daemon.verification import printed

    settings = _settings(args)
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
    summary = await renewal.renew_command(_settings(args), args.within_days, args.school, progress)
    _print(summary.as_json(), args.json)
    return 1 if summary.failed else 0


async def _package(args: argparse.Namespace) -> int:
    from daemon import package_commands as package_cli

    result = await package_cli.package(
        _settings(args), args.school, args.year, args.round, submit=args.submit
    )
    _print(result, args.json)
    state = result.get("state")
    return 0 if state in (None, "built", "accepted") else 1


async def _package_list(args: argparse.Namespace) -> int:
    from daemon import package_commands as package_cli
    from daemon.packaging.packages import PackageState

    result = await package_cli.listing(_settings(args), PackageState(args.state), args.school)
    _print(result, args.json)
    return 0


async def _package_resume(args: argparse.Namespace) -> int:
    from daemon import package_commands as package_cli

    result = await package_cli.resume(
        _settings(args), args.package_id, args.reason, follow=args.follow
    )
    _print(result, args.json)
    return 1 if result["state"] in ("rejected", "attention") else 0


async def _package_reject(args: argparse.Namespace) -> int:
    from daemon import package_commands as package_cli

    result = await package_cli.reject(_settings(args), args.package_id, args.reason)
    _print(result, args.json)
    return 0


async def _mock_ministry(args: argparse.Namespace) -> int:
    from daemon import app
    from daemon import package_commands as package_cli
    from daemon.dev import ministry_sim

    settings = _settings(args) if args.config or not args.token_file else None
    roots = args.trust_root or (settings.signing.trust_roots if settings else [])
    options = package_cli.SimulatorOptions(
        host=args.host,
        port=args.port,
        store_dir=args.dir,
        trust_roots=roots,
        token=package_cli.simulator_token(args.token_file, settings),
        faults=ministry_sim.Faults(
            latency_ms=args.latency_ms,
            error_rate=args.error_rate,
            throttle_rate=args.throttle_rate,
            retry_after_s=args.retry_after_s,
            drop_rate=args.drop_rate,
            accept_delay_s=args.accept_delay_s,
            forget_receipts=args.forget_receipts,
            seed=args.seed,
        ),
    )
    stop = asyncio.Event()
    app.install_signal_handlers(stop)
    await package_cli.mock_ministry(options, stop)
    return 0


async def _preflight(settings: Settings, **needs: bool) -> None:
    """One sentence and exit 2, not a traceback, when a service is down or refuses us."""
    from daemon import preflight

    problems = await preflight.problems_of(settings, **needs)
    if problems:
        raise problems[0]


def _print(value: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, ensure_ascii=False))
        return
    for key, item in value.items():
        print(f"{key}: {json.dumps(item, ensure_ascii=False)}")


# Libraries that say too much: the AMQP ones log whole message bodies (student ids)
# at DEBUG, fontTools narrates every font subset of the sample PDFs at INFO.
_QUIET_LOGGERS = {"aiormq": logging.INFO, "aio_pika": logging.INFO, "fontTools": logging.WARNING}


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name, floor in _QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(floor, logging.getLogger().level))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hocba-signer", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file (default: $HOCBA_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    cmd = sub.add_parser("run", help="run the daemon")
    cmd.set_defaults(handler=_run)
    cmd = sub.add_parser("migrate", help="apply database migrations")
    cmd.set_defaults(handler=_migrate)

    dev = sub.add_parser("dev", help="development environment").add_subparsers(
        required=True, metavar="DEV_COMMAND"
    )
    cmd = dev.add_parser("init", help="provision dev HSM token, PKI, database, registry")
    cmd.add_argument("--dir", type=Path, default=Path(".dev"))
    cmd.add_argument("--schools", type=int, default=3)
    cmd.add_argument(
        "--services-port", type=int, default=9475, help="port of the dev OCSP, CRL and TSA"
    )
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_dev_init)
    cmd = dev.add_parser("revoke", help="revoke a signer's certificate (dev OCSP and CRL)")
    cmd.add_argument("--dir", type=Path, default=Path(".dev"))
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--signer", required=True)
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_dev_revoke)
    cmd = dev.add_parser("consent", help="mint a consent JWS as the school system would")
    cmd.add_argument("--dir", type=Path, default=Path(".dev"))
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--signer", required=True)
    cmd.add_argument("--record", required=True)
    cmd.add_argument(
        "--stage", required=True, choices=["homeroom_teacher", "principal", "school_seal"]
    )
    cmd.add_argument("--digest", required=True)
    cmd.add_argument("--ttl", type=int, default=3600)
    cmd.set_defaults(handler=_dev_consent)

    cmd = sub.add_parser("publish", help="publish one sign request (sample school system)")
    from producers import publish

    publish.add_arguments(cmd)
    cmd.set_defaults(handler=_publish)

    cmd = sub.add_parser("demo", help="the whole flow on this machine")
    cmd.add_argument("--dir", type=Path, default=Path(".dev"))
    cmd.add_argument("--records", type=int, default=50, help="records per school")
    cmd.add_argument("--schools", type=int, default=3)
    cmd.add_argument("--output-dir", type=Path, default=Path("var/demo"))
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_demo)

    cmd = sub.add_parser("package", help="package a school's issued records of a round")
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--year", required=True, help="academic year, e.g. 2025-2026")
    cmd.add_argument("--round", type=int, choices=[1, 2], required=True)
    cmd.add_argument("--submit", action="store_true", help="submit and follow to the verdict")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_package)
    _operator_parsers(sub)
    ltv = sub.add_parser("ltv", help="long-term validation").add_subparsers(
        required=True, metavar="COMMAND"
    )
    cmd = ltv.add_parser("renew", help="fresh validation data and a document timestamp")
    cmd.add_argument("--within-days", type=int, help="default: ltv.renew_within_days")
    cmd.add_argument("--school", help="only this school's records")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_ltv_renew)
    from daemon.registry import cli as registry_cli

    registry_cli.add_parsers(sub)
    from daemon import audit_commands

    audit_commands.add_parsers(sub)

    _mock_ministry_parser(sub)

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
    return parser


def _operator_parsers(sub: Any) -> None:
    """What an operator does with packages, beside `package` (whose options stay as they are)."""
    cmd = sub.add_parser("package-list", help="list packages in a state (default: attention)")
    cmd.add_argument(
        "--state",
        default="attention",
        choices=["building", "built", "submitting", "submitted", "accepted", "rejected",
                 "attention"],
    )  # fmt: skip
    cmd.add_argument("--school")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_package_list)

    cmd = sub.add_parser(
        "package-resume", help="send a package in attention to the ministry again (same key)"
    )
    cmd.add_argument("package_id", type=UUID, metavar="PACKAGE_ID")
    cmd.add_argument("--reason", help="why, for the audit trail")
    cmd.add_argument("--follow", action="store_true", help="submit and follow to the verdict")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_package_resume)

    cmd = sub.add_parser(
        "package-reject", help="give up a package in attention; its records are packaged again"
    )
    cmd.add_argument("package_id", type=UUID, metavar="PACKAGE_ID")
    cmd.add_argument("--reason", required=True, help="why, told to the school system")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_package_reject)


def _mock_ministry_parser(sub: Any) -> None:
    cmd = sub.add_parser("mock-ministry", help="run the ministry API simulator")
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--port", type=int, default=9480)
    cmd.add_argument("--dir", type=Path, default=Path("var/ministry"), help="where packages go")
    cmd.add_argument("--token-file", type=Path, help="accepted bearer token")
    cmd.add_argument("--trust-root", type=Path, action="append", help="trusted root certificate")
    cmd.add_argument("--latency-ms", type=int, default=0)
    cmd.add_argument("--error-rate", type=float, default=0.0, help="share answered 503")
    cmd.add_argument("--throttle-rate", type=float, default=0.0, help="share answered 429")
    cmd.add_argument("--retry-after-s", type=int, default=1)
    cmd.add_argument("--drop-rate", type=float, default=0.0, help="share of POSTs dropped")
    cmd.add_argument("--accept-delay-s", type=float, default=0.0)
    cmd.add_argument(
        "--forget-receipts",
        type=int,
        default=0,
        metavar="N",
        help="forget the first N receipts polled (404), as a ministry losing them",
    )
    cmd.add_argument("--seed", type=int)
    cmd.set_defaults(handler=_mock_ministry)


if __name__ == "__main__":
    raise SystemExit(main())
