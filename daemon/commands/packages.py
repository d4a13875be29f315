"""`hocba-signer package`, and the operator's `package-list`, `package-resume`, `package-reject`."""

from __future__ import annotations

import argparse
from typing import Any
from uuid import UUID

from daemon.commands import common


def add_parsers(sub: Any) -> None:
    cmd = sub.add_parser("package", help="package a school's issued records of a round")
    cmd.add_argument("--school", required=True)
    cmd.add_argument("--year", required=True, help="academic year, e.g. 2025-2026")
    cmd.add_argument("--round", type=int, choices=[1, 2], required=True)
    cmd.add_argument("--submit", action="store_true", help="submit and follow to the verdict")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(handler=_package)
    _operator_parsers(sub)


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


async def _package(args: argparse.Namespace) -> int:
    from daemon.commands import package_actions as package_cli

    result = await package_cli.package(
        common.settings(args), args.school, args.year, args.round, submit=args.submit
    )
    common.show(result, args.json)
    state = result.get("state")
    return 0 if state in (None, "built", "accepted") else 1


async def _package_list(args: argparse.Namespace) -> int:
    from daemon.commands import package_actions as package_cli
    from daemon.packaging.packages import PackageState

    result = await package_cli.listing(common.settings(args), PackageState(args.state), args.school)
    common.show(result, args.json)
    return 0


async def _package_resume(args: argparse.Namespace) -> int:
    from daemon.commands import package_actions as package_cli

    result = await package_cli.resume(
        common.settings(args), args.package_id, args.reason, follow=args.follow
    )
    common.show(result, args.json)
    return 1 if result["state"] in ("rejected", "attention") else 0


async def _package_reject(args: argparse.Namespace) -> int:
    from daemon.commands import package_actions as package_cli

    result = await package_cli.reject(common.settings(args), args.package_id, args.reason)
    common.show(result, args.json)
    return 0
