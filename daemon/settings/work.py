"""The configuration's sections for how the daemon does its work: signing levels,
packaging, long-term validation, verification, the audit trail, the status relay and
the main process's memory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from daemon.credentials import read_secret
from daemon.settings.section import Section


class SigningSettings(Section):
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


class PackagingSettings(Section):
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


class LtvSettings(Section):
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


class VerificationSettings(Section):
    """What a signer's certificate must say for a verifier that has only the file."""

    # A certificate policy OID (dotted) or a subject title (2.5.4.12) value -> the role
    # (stage) whose field it may sign. A real CA's policy OIDs go here.
    roles: dict[str, RoleName] = Field(default_factory=lambda: dict(DEV_ROLE_POLICIES))
    # The school id is the subject's organizationIdentifier (2.5.4.97) after this prefix.
    school_id_prefix: str = ""


class VerifyServerSettings(Section):
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


class AuditSettings(Section):
    """The audit trail's anchors and its scheduled verification (daemon/audit/)."""

    # The chains' heads are timestamped by signing.tsa_url this often, and after each
    # round's deadline (packaging.deadlines); None: never (no TSA configured, no anchors).
    anchor_every_s: float | None = Field(default=86_400.0, gt=0)
    # The daemon walks the chains and anchors this often (one instance at a time, after
    # the last walk any instance recorded in audit_verifications) and says so in
    # hocba_audit_last_verification_ok; None: only `hocba-signer audit verify`.
    verify_every_s: float | None = Field(default=86_400.0, gt=0)


class StatusSettings(Section):
    """The outbox relay that publishes status events (producers/status.py)."""

    # After a pass that published events, the relay waits this long before the next,
    # so that under load one pass takes many batches' events (README "Throughput");
    # an event after a quiet spell still leaves at once. 0: a pass per commit.
    gather_ms: float = Field(default=50.0, ge=0, le=1000)


class MemorySettings(Section):
    # Seconds between two malloc_trim(0) of the main process (daemon/memdebug.py); 0: never.
    trim_interval_s: float = Field(default=60.0, ge=0)
