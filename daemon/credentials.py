"""Secrets a configuration names: a file of its own, a systemd credential, or inline.

A secret file is read when the setting is resolved, never kept in the configuration's
text; systemd's `LoadCredential=` puts one in `$CREDENTIALS_DIRECTORY` under its name.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from daemon.errors import ConfigError


def read_secret(inline: SecretStr | None, path: Path | None, credential: str) -> SecretStr | None:
    """The secret from a file, else a systemd credential, else the inline value."""
    if path is not None:
        return SecretStr(_read(path))
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / credential).is_file():
        return SecretStr(_read(Path(creds) / credential))
    return inline


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"Cannot read secret file {path}: {exc.strerror}.") from exc
