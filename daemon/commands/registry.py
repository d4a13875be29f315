"""The registry's subcommands of `hocba-signer`: school, signer, consent-key.

Imported by daemon/cli.py while it builds its parser, so this module imports only
argparse at load time (HSM worker processes re-import the entry point); each handler
imports what it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

STAGES = ["homeroom_teacher", "principal", "school_seal"]
GRACE_HOURS = 48.0


def add_parsers(sub: Any) -> None:
    _school_parsers(sub)
    _signer_parsers(sub)
    rotate = (
        sub.add_parser("consent-key", help="a school's consent verification key")
        .add_subparsers(required=True, metavar="CONSENT_KEY_COMMAND")
        .add_parser("rotate", help="a new consent key; the old one stays valid for a grace period")
    )
    rotate.add_argument("--school", required=True)
    _key_arguments(rotate, "--key-file", "--generate-to")
    rotate.add_argument(
        "--grace-hours",
        type=float,
        default=GRACE_HOURS,
        help=f"how long consents under the old key are still accepted (default {GRACE_HOURS:g})",
    )
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(handler=_consent_key_rotate)


def _school_parsers(sub: Any) -> None:
    school = sub.add_parser("school", help="register and look at schools").add_subparsers(
        required=True, metavar="SCHOOL_COMMAND"
    )
    cmd = school.add_parser("add", help="register a school with its consent key")
    cmd.add_argument("--school", required=True, help="school id, e.g. 31000123")
    cmd.add_argument("--name", required=True)
    _key_arguments(cmd, "--consent-key-file", "--generate-consent-key")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_school_add)
    cmd = school.add_parser("list", help="every registered school")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_school_list)
    cmd = school.add_parser("show", help="a school: consent keys, signers, rosters")
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_school_show)


def _signer_parsers(sub: Any) -> None:
    signer = sub.add_parser("signer", help="register signers, checked against the HSM")
    signer = signer.add_subparsers(required=True, metavar="SIGNER_COMMAND")
    cmd = signer.add_parser("add", help="register one signer (key label <school>/<signer>)")
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--signer", required=True)
    cmd.add_argument("--stage", required=True, choices=STAGES)
    cmd.add_argument("--reactivate", action="store_true", help="also make it active again")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_signer_add)
    cmd = signer.add_parser("import", help="register signers from a CSV; all lines or none")
    cmd.add_argument("--csv", type=Path, required=True, help="school_id,signer_id,stage lines")
    cmd.add_argument("--school", help="the school of every line (then school_id may be left out)")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_signer_import)
    cmd = signer.add_parser("deactivate", help="refuse a signer's requests from now on")
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--signer", required=True)
    cmd.add_argument("--reason", help="why, for the audit trail")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_signer_deactivate)
    cmd = signer.add_parser("list", help="a school's signers")
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--stage", choices=STAGES)
    cmd.add_argument("--all", action="store_true", help="deactivated signers too")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_signer_list)


def _key_arguments(cmd: argparse.ArgumentParser, read: str, generate: str) -> None:
    cmd.add_argument("--alg", choices=["EdDSA", "HS256"], default="EdDSA")
    keys = cmd.add_mutually_exclusive_group(required=True)
    keys.add_argument(
        read, type=Path, help="EdDSA: the school system's public key (PEM); HS256: secret (hex)"
    )
    keys.add_argument(
        generate, type=Path, help="generate the key; write the school system's half here (0600)"
    )


def _settings(args: argparse.Namespace) -> Any:
    from daemon.settings import load_settings

    return load_settings(args.config)


async def _school_add(args: argparse.Namespace) -> int:
    from daemon.registry import commands

    read = args.consent_key_file
    done = await commands.school_add(
        _settings(args), args.school, args.name, args.alg, read, args.generate_consent_key
    )
    return _print(done, args.json)


async def _school_list(args: argparse.Namespace) -> int:
    from daemon.registry import commands

    return _print(await commands.school_list(_settings(args)), args.json)


async def _school_show(args: argparse.Namespace) -> int:
    from daemon.registry import commands

    return _print(await commands.school_show(_settings(args), args.school), args.json)


async def _consent_key_rotate(args: argparse.Namespace) -> int:
    from daemon.registry import commands

    done = await commands.consent_key_rotate(
        _settings(args),
        args.school,
        args.alg,
        args.key_file,
        args.generate_to,
        timedelta(hours=args.grace_hours),
    )
    return _print(done, args.json)


async def _signer_add(args: argparse.Namespace) -> int:
    from daemon.registry import commands
    from daemon.stages import Stage

    done = await commands.signer_add(
        _settings(args), args.school, args.signer, Stage(args.stage), reactivate=args.reactivate
    )
    return _print(done, args.json)


async def _signer_import(args: argparse.Namespace) -> int:
    from daemon.registry import commands

    report = await commands.signer_import(_settings(args), args.csv, args.school)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    elif report["applied"]:
        counts = ", ".join(f"{report[k]} {k}" for k in ("added", "updated", "unchanged"))
        print(f"{args.csv}: {report['lines']} lines applied ({counts}).")
    else:
        for error in report["errors"]:
            print(error["message"], file=sys.stderr)
        bad = len({e["line"] for e in report["errors"]})
        print(f"{args.csv}: {bad} of {report['lines']} lines refused; nothing was applied.")
    return 0 if report["applied"] else 1


async def _signer_deactivate(args: argparse.Namespace) -> int:
    from daemon.registry import commands

    done = await commands.signer_deactivate(_settings(args), args.school, args.signer, args.reason)
    return _print(done, args.json)


async def _signer_list(args: argparse.Namespace) -> int:
    from daemon.registry import commands
    from daemon.stages import Stage

    stage = Stage(args.stage) if args.stage else None
    return _print(
        await commands.signer_list(_settings(args), args.school, stage, args.all), args.json
    )


def _print(value: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(value, ensure_ascii=False))
        return 0
    for key, item in value.items():
        if isinstance(item, list) and item and isinstance(item[0], dict):
            print(f"{key}:")
            for entry in item:
                print("  " + "  ".join(f"{k}={v}" for k, v in entry.items()))
        else:
            print(f"{key}: {json.dumps(item, ensure_ascii=False)}")
    return 0
