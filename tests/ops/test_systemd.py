"""The systemd units: `systemd-analyze verify` is silent and the sandbox exposure is low.

The units name /opt/hocba-signer/.venv/bin/hocba-signer, which verify requires to
exist; the tests check copies that point at this checkout's console script instead.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.ops.tools import ROOT, run, tool

UNITS = ROOT / "systemd"
INSTALLED = "/opt/hocba-signer/.venv/bin/hocba-signer"
MAX_EXPOSURE = 2.0


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units, ExecStart pointed at this venv, and the template as instance 9464."""
    binary = Path(sys.executable).with_name("hocba-signer")
    assert binary.is_file(), binary
    for unit in UNITS.glob("hocba-signer*"):
        text = unit.read_text("utf-8")
        assert INSTALLED in text or unit.suffix != ".service", unit.name
        (tmp_path / unit.name).write_text(text.replace(INSTALLED, str(binary)), "utf-8")
    shutil.copy(tmp_path / "hocba-signer@.service", tmp_path / "hocba-signer@9464.service")
    return tmp_path


def test_units_verify_without_a_warning(units: Path) -> None:
    names = ["hocba-signer@9464.service", "hocba-signer-migrate.service", "hocba-signer.target"]
    result = run(tool("systemd-analyze"), "verify", "--man=no", *(units / n for n in names))
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings; none is acceptable here.
    ours = [line for line in result.stderr.splitlines() if str(units) in line]
    assert ours == []


@pytest.mark.parametrize("unit", ["hocba-signer@9464.service", "hocba-signer-migrate.service"])
def test_sandbox_exposure_is_low(units: Path, unit: str) -> None:
    result = run(
        tool("systemd-analyze"),
        "security",
        "--offline=true",
        f"--threshold={MAX_EXPOSURE * 10:.0f}",
        units / unit,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level" in result.stdout


def test_instances_are_notify_units_with_credentials_and_a_watchdog() -> None:
    text = (UNITS / "hocba-signer@.service").read_text("utf-8")
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Requires=hocba-signer-migrate.service",
        "After=hocba-signer-migrate.service network-online.target",
        "PartOf=hocba-signer.target",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "Environment=HOCBA_INSTANCE=%H-%i HOCBA_HTTP__PORT=%i PYTHONUNBUFFERED=1",
    ):
        assert line in text.splitlines(), line
    for credential in ("hsm-pin", "db-password", "amqp-password", "mqtt-password"):
        assert f"LoadCredential={credential}:" in text
