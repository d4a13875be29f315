"""What every subcommand of `hocba-signer` shares: its settings, the preflight, the output.

Imported while the parser is built, by every process (the HSM workers re-import the
entry point under spawn): it imports only the standard library at load time.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.settings import Settings


def settings(args: argparse.Namespace) -> Settings:
    from daemon.settings import load_settings

    return load_settings(args.config)


async def preflight(settings: Settings, **needs: bool) -> None:
    """One sentence and exit 2, not a traceback, when a service is down or refuses us."""
    from daemon import preflight

    problems = await preflight.problems_of(settings, **needs)
    if problems:
        raise problems[0]


def show(value: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, ensure_ascii=False))
        return
    for key, item in value.items():
        print(f"{key}: {json.dumps(item, ensure_ascii=False)}")
