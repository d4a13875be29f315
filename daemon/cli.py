"""`hocba-signer`: the command line, and the other composition root beside app.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from daemon.commands import common
from daemon.errors import HocbaError

log = logging.getLogger("hocba_signer")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _logging(args.log_level)
    try:
        return int(asyncio.run(args.handler(args)) or 0)
    except HocbaError as exc:
        print(f"hocba-signer: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    from daemon import app

    settings = common.settings(args)
    # MQTT may come later: the outbox keeps its events until the broker is back.
    await common.preflight(settings, mqtt=False)
    stop = asyncio.Event()
    app.install_signal_handlers(stop)
    await app.run(settings, stop)
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    from daemon import migrate
    from daemon.database import connect_once

    settings = common.settings(args)
    settings = settings.model_copy(update={"database": settings.database.for_migrations()})
    await common.preflight(settings, rabbitmq=False, mqtt=False)
    conn = await connect_once(settings.database)
    try:
        applied = await migrate.migrate(conn)
    finally:
        await conn.close()
    print(json.dumps({"applied": applied}))
    return 0


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


def parser() -> argparse.ArgumentParser:
    from daemon.commands import audit, dev, packages, records, registry

    parser = argparse.ArgumentParser(prog="hocba-signer", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file (default: $HOCBA_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    cmd = sub.add_parser("run", help="run the daemon")
    cmd.set_defaults(handler=_run)
    cmd = sub.add_parser("migrate", help="apply database migrations")
    cmd.set_defaults(handler=_migrate)
    for commands in (dev, packages, records, registry, audit):
        commands.add_parsers(sub)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
