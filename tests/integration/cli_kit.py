"""The CLI as a script runs it, for tests that judge what an operator or auditor sees."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

from daemon import cli


async def verify_json(path: Path, root_pem: Path) -> tuple[int, dict[str, Any]]:
    """`hocba-signer verify FILE --trust-root ROOT --json`: its exit code and report."""
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["verify", str(path), "--trust-root", str(root_pem), "--json"])

    code = await asyncio.to_thread(run)
    return code, json.loads(out.getvalue())
