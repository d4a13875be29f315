"""The chaos suite in its CI size: a few minutes of faults on private services.

`make chaos` runs the bigger sizes; this runs `python -m tests.chaos --size ci` so that
CI proves the invariants on every change. It needs root (private PostgreSQL and
RabbitMQ run as their system users, the store is a tmpfs); elsewhere it is skipped
unless CI is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.chaos
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for private services"
)
def test_every_invariant_holds_under_faults() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos", "--size", "ci"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
    )
    print(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.endswith(("holds", "VIOLATED"))]
    assert lines, done.stdout + done.stderr[-3000:]
    assert not [line for line in lines if line.endswith("VIOLATED")], "\n".join(lines)
    assert done.returncode == 0, done.stderr[-3000:]
