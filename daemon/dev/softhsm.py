"""A SoftHSM2 token store of its own (softhsm2.conf, tokens/), for the dev PKI and the tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from daemon.errors import ConfigError

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


def ensure_softhsm_token(base_dir: Path, token_label: str, pin: str, so_pin: str) -> dict[str, str]:
    """Write softhsm2.conf and initialise the token unless it exists; the env to use it."""
    tokens = base_dir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = base_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    env = {"SOFTHSM2_CONF": str(conf)}
    if token_label not in _token_labels(env):
        _softhsm_util(
            env,
            "--init-token", "--free", "--label", token_label,
            "--pin", pin, "--so-pin", so_pin,
        )  # fmt: skip
    return env


def _token_labels(env: Mapping[str, str]) -> set[str]:
    out = _softhsm_util(env, "--show-slots")
    return {
        line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.strip().startswith("Label:")
    }


def _softhsm_util(env: Mapping[str, str], *args: str) -> str:
    try:
        done = subprocess.run(
            ["softhsm2-util", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        # The arguments hold the PINs: report the subcommand only.
        raise ConfigError(f"softhsm2-util {args[0]} failed: {_stderr(exc)}") from exc
    return done.stdout


def _stderr(exc: OSError | subprocess.CalledProcessError) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return str(exc.stderr).strip()
    return exc.strerror or str(exc)
