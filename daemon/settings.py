"""The one configuration model: a TOML file, overridden by `HOCBA_*` variables.

Nested sections are overridden with a double underscore, e.g.
`HOCBA_DATABASE__DSN` or `HOCBA_HSM__PIN_FILE`. Secrets are `SecretStr`, read from a
file, from a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`) or, for
development only, given inline; they print as `**********`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.credentials import read_secret
from daemon.errors import ConfigError

CONFIG_ENV = "HOCBA_CONFIG"
# The file `load_settings(path)` reads, for the Settings it builds (else $HOCBA_CONFIG).
_config_file: ContextVar[str | None] = ContextVar("hocba_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class DatabaseSettings(_Section):
    dsn: str = "postgresql://postgres@127.0.0.1:5432/hocba"
    password: SecretStr | None = None
    password_file: Path | None = None
    pool_min: int = Field(default=2, ge=1)
    pool_max: int = Field(default=10, ge=1)
    command_timeout_s: float = 30.0
    # Least privilege (README, Deploying): `dsn` names a login role in hocba_daemon;
    # `migrate` connects as the schema owner by `migrate_dsn`, `verify-server` as a
    # member of hocba_verifier by `verifier_dsn` (each unset: `dsn`). Each unit's own
    # `db-password` credential is that role's password.
    migrate_dsn: str | None = None
    verifier_dsn: str | None = None

    def resolved_password(self) -> SecretStr | None:
        return read_secret(self.password, self.password_file, "db-password")

    def for_migrations(self) -> DatabaseSettings:
        return self.model_copy(update={"dsn": self.migrate_dsn or self.dsn})

    def for_verifier(self) -> DatabaseSettings:
        return self.model_copy(update={"dsn": self.verifier_dsn or self.dsn})


class AmqpSettings(_Section):
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    password: SecretStr | None = None
    password_file: Path | None = None
    prefetch: int = Field(default=64, ge=1, le=1000)
    max_attempts: int = Field(default=8, ge=1)
    retry_base_ms: int = Field(default=1000, ge=10)
    retry_cap_ms: int = Field(default=60_000, ge=10)
    delivery_limit: int = Field(default=20, ge=1)
    max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Sign queues hocba.sign.shard.<i> a consistent-hash exchange spreads the schools
    # over (README "Fairness between schools"); 0: the single queue hocba.sign.
    sign_shards: int = Field(default=8, ge=0, le=64)
    # Unacknowledged requests each shard's consumer holds; 0: twice the handlers
    # (README "Fairness between schools": the small school's wait against the total rate).
    sign_shard_prefetch: int = Field(default=0, ge=0, le=1000)
    # Sign requests decided, stored and acknowledged together (README "Throughput"): up
    # to batch_size deliveries, or those that arrived within batch_linger_ms of the
    # first (and, while two batches run, until one of them ends: consumers/batches.py).
    # 1: one at a time, as before.
    batch_size: int = Field(default=8, ge=1, le=256)
    batch_linger_ms: float = Field(default=10.0, ge=0, le=1000)

    def resolved_password(self) -> SecretStr | None:
        return read_secret(self.password, self.password_file, "amqp-password")


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    topic_prefix: str = "hocba"
    client_id_prefix: str = "hocba-signer"

    def resolved_password(self) -> SecretStr | None:
        return read_secret(self.password, self.password_file, "mqtt-password")


class HsmSettings(_Section):
    module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    token_label: str = "hocba"
    pin: SecretStr | None = None
    pin_file: Path | None = None
    workers: int = Field(default=2, ge=1, le=64)
    op_timeout_s: float = Field(default=30.0, gt=0)
    # Replace the worker processes after this many signatures: the fresh ones log in
    # before the old ones finish their jobs and exit, so no request waits or is lost.
    # 0: never.
    recycle_after_jobs: int = Field(default=10_000, ge=0)
    # Extra environment for the worker processes, e.g. SOFTHSM2_CONF or
    # P11_KIT_SERVER_ADDRESS for a token reached through `p11-kit server`.
    env: dict[str, str] = Field(default_factory=dict)

    def resolved_pin(self) -> SecretStr:
        pin = read_secret(self.pin, self.pin_file, "hsm-pin")
        if pin is None:
            raise ConfigError("No HSM PIN: set hsm.pin_file or the hsm-pin credential.")
        return pin


class SigningSettings(_Section):
    # PAdES baseline level: B-T adds an RFC 3161 signature timestamp to each
    # signature; B-LT also embeds, at the seal, every signature's validation data
    # (DSS); B-LTA then adds a document timestamp over it all.
    level: Literal["B-B", "B-T", "B-LT", "B-LTA"] = "B-B"
    tsa_url: str | None = None
    tsa_username: str | None = None
    tsa_password: SecretStr | None = None
    tsa_password_file: Path | None = None
    tsa_timeout_s: float = Field(default=10.0, gt=0)
    # Room in each signature's /Contents for its timestamp token (the TSA's
    # certificates included); a token that does not fit is an error, not a guess.
    timestamp_bytes_reserved: int = Field(default=8192, ge=1024)
    # OCSP (CRL as fallback) before a key is used; answers are cached in the
    # database until their nextUpdate, at least this long for one without it.
    status_timeout_s: float = Field(default=10.0, gt=0)
    status_min_cache_s: float = Field(default=60.0, ge=0)
    trust_roots: list[Path] = Field(default_factory=list)
    bytes_reserved: int = Field(default=16_384, ge=4096)
    max_document_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    fetch_timeout_s: float = Field(default=20.0, gt=0)
    # Documents sent by reference are fetched only from these hosts (the school
    # systems' document servers); none by default, so no request can make the daemon
    # reach into the network it runs in. Plain http only where explicitly allowed.
    fetch_allowed_hosts: list[str] = Field(default_factory=list)
    fetch_allow_http: bool = False
    # Processes rendering v2 records (record_data) off the event loop; 0 renders in a
    # thread of the daemon's own process, which holds the GIL its event loop needs.
    render_workers: int = Field(default=1, ge=0, le=64)

    @property
    def timestamped(self) -> bool:
        return self.level != "B-B"

    @model_validator(mode="after")
    def _tsa_for_level(self) -> SigningSettings:
        if self.timestamped and not self.tsa_url:
            raise ValueError(f"signing.level {self.level} needs signing.tsa_url")
        return self

    def resolved_tsa_password(self) -> SecretStr | None:
        return read_secret(self.tsa_password, self.tsa_password_file, "tsa-password")


class S3Settings(_Section):
    """An S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph RGW, Garage, …)."""

    # None: AWS's own endpoint for `region`.
    endpoint_url: str | None = None
    bucket: str = "hocba"
    region: str = "us-east-1"
    # Both None: botocore's default chain (AWS_* variables, instance profile).
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    secret_access_key_file: Path | None = None
    # Prepended to every key, e.g. "hocba/" to share a bucket.
    key_prefix: str = ""
    # Most S3-compatible servers want path-style URLs (http://host:port/bucket/key).
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    # botocore's own attempts per request (standard mode), before StoreUnavailable.
    max_attempts: int = Field(default=3, ge=1, le=20)
    max_connections: int = Field(default=20, ge=1)

    def resolved_secret_access_key(self) -> SecretStr | None:
        secret = read_secret(
            self.secret_access_key, self.secret_access_key_file, "s3-secret-access-key"
        )
        if (secret is None) != (self.access_key_id is None):
            raise ConfigError(
                "Give store.s3.access_key_id and its secret (secret_access_key_file or the "
                "s3-secret-access-key credential) together, or neither."
            )
        return secret


class StoreSettings(_Section):
    """Where blobs (record versions, packages) live: `fs` on one machine, `s3` for several."""

    backend: Literal["fs", "s3"] = "fs"
    # The `fs` backend's root.
    path: Path = Path("var/documents")
    s3: S3Settings = S3Settings()


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class MinistrySettings(_Section):
    """The ministry's package API, and how patiently we talk to it."""

    url: str = "http://127.0.0.1:9480"
    token: SecretStr | None = None
    token_file: Path | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    retry_base_ms: int = Field(default=1000, ge=1)
    retry_cap_ms: int = Field(default=60_000, ge=1)
    # Attempts per submission run; a package still not through waits for the next run.
    max_attempts: int = Field(default=20, ge=1)
    # A Retry-After longer than this is cut to it, so one answer cannot park us for a day.
    max_retry_after_s: float = Field(default=600.0, gt=0)
    poll_base_ms: int = Field(default=2000, ge=1)
    poll_cap_ms: int = Field(default=60_000, ge=1)
    max_polls: int = Field(default=200, ge=1)
    # A receipt the ministry answers 404 for is resent under the same Idempotency-Key;
    # after this many such resends the package stops in `attention`.
    max_receipt_resends: int = Field(default=3, ge=0)

    def resolved_token(self) -> SecretStr:
        token = read_secret(self.token, self.token_file, "ministry-token")
        if token is None:
            raise ConfigError("No ministry token: set ministry.token_file or the credential.")
        return token


class PackagingSettings(_Section):
    """When the schedule builds and submits packages (which are blobs in the store)."""

    # Deprecated and unused: packages are stored as blobs. Kept so that configuration
    # files written for earlier versions still load; packages built by those versions
    # are read from the path kept in their database row, once, into the store.
    path: Path = Path("var/packages")
    # Day and month of each round's deadline (round 1: completed the grade; 2: supplementary).
    deadlines: dict[int, str] = Field(default_factory=lambda: {1: "06-30", 2: "08-25"})
    lead_days: int = Field(default=7, ge=0, le=120)
    # After the deadline, late records are still packaged for this many days.
    grace_days: int = Field(default=30, ge=0, le=120)
    # None turns the schedule off; unfinished packages are then resumed by command only.
    schedule_interval_s: float | None = Field(default=3600.0, gt=0)
    submit: bool = True


class LtvSettings(_Section):
    """Renewal of issued records' long-term validation data (daemon/ltv/renewal.py)."""

    # Records whose newest timestamp's TSA certificate (or algorithm) expires within
    # this many days get fresh validation data and a new document timestamp.
    renew_within_days: int = Field(default=180, ge=1, le=3650)
    # The daily run's time of day in Vietnam (HH:MM); unset, there is no schedule and
    # `hocba-signer ltv renew` renews by command only.
    renew_at: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    # At most this many records a minute, so the TSA and the night's other work keep room.
    max_per_minute: int = Field(default=60, ge=1, le=100_000)


# The dev PKI's certificate policies, one per role (UUID OIDs, ITU-T X.667: no registration).
RoleName = Literal["homeroom_teacher", "principal", "school_seal"]
DEV_ROLE_POLICIES: dict[str, RoleName] = {
    "2.25.85189651976587943606665463056553931886": "homeroom_teacher",
    "2.25.201406975269988114704813514147562675827": "principal",
    "2.25.98008094401535712579326777865135250248": "school_seal",
}


class VerificationSettings(_Section):
    """What a signer's certificate must say for a verifier that has only the file."""

    # A certificate policy OID (dotted) or a subject title (2.5.4.12) value -> the role
    # (stage) whose field it may sign. A real CA's policy OIDs go here.
    roles: dict[str, RoleName] = Field(default_factory=lambda: dict(DEV_ROLE_POLICIES))
    # The school id is the subject's organizationIdentifier (2.5.4.97) after this prefix.
    school_id_prefix: str = ""


class VerifyServerSettings(_Section):
    """`hocba-signer verify-server`: the public verification page and API."""

    host: str = "127.0.0.1"
    port: int = Field(default=9470, ge=0, le=65535)
    # Where the public reaches this server; printed copies' QR codes open <public_url>/r/<sha256>.
    public_url: str = "http://127.0.0.1:9470"
    # Larger bodies are refused (413) as soon as the header or the bytes read say so.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Per client IP, a token bucket in this process's memory: `rate_burst` requests at
    # once, refilled at `rate_per_minute`.
    rate_per_minute: float = Field(default=30.0, gt=0)
    rate_burst: int = Field(default=10, ge=1)
    # Peers whose X-Forwarded-For is believed (a reverse proxy in front); none by default.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Reading the whole body, and one check in the pool.
    read_timeout_s: float = Field(default=60.0, gt=0)
    check_timeout_s: float = Field(default=120.0, gt=0)
    # Processes that run the checks (CPU-bound); checks beyond workers * queue_per_worker
    # waiting at once are answered 503.
    workers: int = Field(default=2, ge=1, le=64)
    queue_per_worker: int = Field(default=4, ge=1)


class AuditSettings(_Section):
    """The audit trail's anchors and its scheduled verification (daemon/audit/)."""

    # The chains' heads are timestamped by signing.tsa_url this often, and after each
    # round's deadline (packaging.deadlines); None: never (no TSA configured, no anchors).
    anchor_every_s: float | None = Field(default=86_400.0, gt=0)
    # The daemon walks the chains and anchors this often (one instance at a time, after
    # the last walk any instance recorded in audit_verifications) and says so in
    # hocba_audit_last_verification_ok; None: only `hocba-signer audit verify`.
    verify_every_s: float | None = Field(default=86_400.0, gt=0)


class StatusSettings(_Section):
    """The outbox relay that publishes status events (producers/status.py)."""

    # After a pass that published events, the relay waits this long before the next,
    # so that under load one pass takes many batches' events (README "Throughput");
    # an event after a quiet spell still leaves at once. 0: a pass per commit.
    gather_ms: float = Field(default=50.0, ge=0, le=1000)


class MemorySettings(_Section):
    # Seconds between two malloc_trim(0) of the main process (daemon/memdebug.py); 0: never.
    trim_interval_s: float = Field(default=60.0, ge=0)


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
