"""The configuration's sections for what the daemon connects to: PostgreSQL, RabbitMQ,
MQTT, the HSM, the blob store (a folder or S3), its own HTTP listener and the ministry."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from daemon.credentials import read_secret
from daemon.errors import ConfigError
from daemon.settings.section import Section


class DatabaseSettings(Section):
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


class AmqpSettings(Section):
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


class MqttSettings(Section):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # The first levels of every status topic: no wildcard (`+`, `#`) nor NUL, which a
    # broker refuses to publish to, and not `$`, its own topics (MQTT 3.1.1 §4.7).
    topic_prefix: str = Field(default="hocba", pattern=r"^[^+#\x00$][^+#\x00]{0,127}$")
    client_id_prefix: str = "hocba-signer"

    def resolved_password(self) -> SecretStr | None:
        return read_secret(self.password, self.password_file, "mqtt-password")


class HsmSettings(Section):
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


class S3Settings(Section):
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


class StoreSettings(Section):
    """Where blobs (record versions, packages) live: `fs` on one machine, `s3` for several."""

    backend: Literal["fs", "s3"] = "fs"
    # The `fs` backend's root.
    path: Path = Path("var/documents")
    s3: S3Settings = S3Settings()


class HttpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class MinistrySettings(Section):
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
