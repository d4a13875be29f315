"""`hocba-signer dev init|revoke|consent`, `publish`, `demo`, `mock-ministry`: for development."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from daemon.commands import common


def add_parsers(sub: Any) -> None:
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
    from daemon.dev import publish

    publish.add_arguments(cmd)
    cmd.set_defaults(handler=_publish)

    cmd = sub.add_parser("demo", help="the whole flow on this machine")
    cmd.add_argument("--dir", type=Path, default=Path(".dev"))
    cmd.add_argument("--records", type=int, default=50, help="records per school")
    cmd.add_argument("--schools", type=int, default=3)
    cmd.add_argument("--output-dir", type=Path, default=Path("var/demo"))
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_demo)

    _mock_ministry_parser(sub)


async def _dev_init(args: argparse.Namespace) -> int:
    from daemon.dev import env as devenv
    from daemon.dev import services

    settings = services.dev_settings(args.dir)
    await common.preflight(settings, rabbitmq=False, mqtt=False, database_may_be_missing=True)
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
    common.show(report, args.json)
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
    common.show(
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
    from daemon.dev import publish

    result = await publish.publish_file(args)
    common.show(result, True)
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


async def _mock_ministry(args: argparse.Namespace) -> int:
    from daemon import app
    from daemon.commands import package_actions as package_cli
    from daemon.dev import ministry_sim

    settings = common.settings(args) if args.config or not args.token_file else None
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
