"""The one configuration model: a TOML file, overridden by `HOCBA_*` variables.

Nested sections are overridden with a double underscore, e.g.
`HOCBA_DATABASE__DSN` or `HOCBA_HSM__PIN_FILE`. Secrets are `SecretStr`, read from a
file, from a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`) or, for
development only, given inline; they print as `**********`.

Here: the whole (`Settings`), its sources and `load_settings`. The sections are in
`connections` (what the daemon connects to) and `work` (how it does its work), on the
one base in `section`; every name is importable from here.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.errors import ConfigError
from daemon.settings.connections import (
    AmqpSettings,
    DatabaseSettings,
    HsmSettings,
    HttpSettings,
    MinistrySettings,
    MqttSettings,
    S3Settings,
    StoreSettings,
)
from daemon.settings.work import (
    DEV_ROLE_POLICIES,
    AuditSettings,
    LtvSettings,
    MemorySettings,
    PackagingSettings,
    RoleName,
    SigningSettings,
    StatusSettings,
    VerificationSettings,
    VerifyServerSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEV_ROLE_POLICIES",
    "AmqpSettings",
    "AuditSettings",
    "DatabaseSettings",
    "HsmSettings",
    "HttpSettings",
    "LtvSettings",
    "MemorySettings",
    "MinistrySettings",
    "MqttSettings",
    "PackagingSettings",
    "RoleName",
    "S3Settings",
    "Settings",
    "SigningSettings",
    "StatusSettings",
    "StoreSettings",
    "VerificationSettings",
    "VerifyServerSettings",
    "load_settings",
]

CONFIG_ENV = "HOCBA_CONFIG"
# The file `load_settings(path)` reads, for the Settings it builds (else $HOCBA_CONFIG).
_config_file: ContextVar[str | None] = ContextVar("hocba_config_file", default=None)


class Settings(BaseSettings):
    """The whole configuration, loaded once in `main` and passed down."""

    model_config = SettingsConfigDict(
        hide_input_in_errors=True,
        env_prefix="HOCBA_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    instance: str = "hocba-signer"
    log_level: str = "INFO"
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    database: DatabaseSettings = DatabaseSettings()
    amqp: AmqpSettings = AmqpSettings()
    mqtt: MqttSettings = MqttSettings()
    hsm: HsmSettings = HsmSettings()
    signing: SigningSettings = SigningSettings()
    store: StoreSettings = StoreSettings()
    http: HttpSettings = HttpSettings()
    ministry: MinistrySettings = MinistrySettings()
    packaging: PackagingSettings = PackagingSettings()
    ltv: LtvSettings = LtvSettings()
    verification: VerificationSettings = VerificationSettings()
    verify_server: VerifyServerSettings = VerifyServerSettings()
    audit: AuditSettings = AuditSettings()
    status: StatusSettings = StatusSettings()
    memory: MemorySettings = MemorySettings()

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.database.pool_min > self.database.pool_max:
            raise ValueError("database.pool_min must not exceed database.pool_max")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _config_file.get() or os.environ.get(CONFIG_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load the configuration from `path` (or `$HOCBA_CONFIG`) and the environment."""
    if path is not None and not path.is_file():
        raise ConfigError(f"Configuration file {path} does not exist.")
    # The file is this call's, not the process's: $HOCBA_CONFIG is left as it was, so
    # one command's configuration never leaks into the next one loaded without a path.
    token = _config_file.set(str(path) if path is not None else None)
    try:
        return Settings(**overrides)
    except ValueError as exc:
        raise ConfigError(f"Invalid configuration: {exc}") from exc
    finally:
        _config_file.reset(token)
