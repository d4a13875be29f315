"""`hocba-signer dev init`: a development environment, provisioned idempotently.

Lays out, under one folder (default `.dev/`):

    hocba-signer.toml     a configuration pointing at everything below
    hsm/                  SoftHSM2 config and token (keys generated inside it)
    hsm-pin               the token's user PIN (mode 0600)
    pki/root.pem          the trust root; the CA keys of the dev PKI beside it
    consent/<school>.json each school system's consent minting key (dev only)
    documents/            the document store

and registers the schools, their signers and consent keys in the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon import migrate
from daemon.consent import Alg
from daemon.dev import pki, pki_services, softhsm
from daemon.settings import Settings, load_settings
from producers.school_system import ConsentSigner

TOKEN_LABEL = "hocba-dev"
CONFIG_NAME = "hocba-signer.toml"
# The login role `dev init` and the demo's daemon connect as (a member of hocba_daemon).
DEV_DAEMON_ROLE = "hocba_dev"


@dataclass(frozen=True)
class DevEnv:
    base: Path
    settings: Settings
    schools: tuple[str, ...]
    signers: tuple[pki.ProvisionedSigner, ...]

    @property
    def config_path(self) -> Path:
        return self.base / CONFIG_NAME

    def consent_signer(self, school_id: str) -> ConsentSigner:
        return load_consent_signer(self.base, school_id)

    def signer_for(self, school_id: str, stage: str) -> str:
        return next(
            s.signer_id for s in self.signers if s.school_id == school_id and s.stage == stage
        )


def school_ids(count: int) -> tuple[str, ...]:
    return tuple(str(31000101 + n) for n in range(count))


async def init(
    base: Path,
    schools: int,
    dsn: str = "postgresql://postgres@127.0.0.1:5432/hocba",
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
    services_port: int | None = None,
    daemon_role: str | None = None,
) -> DevEnv:
    """Provision (or reuse) the dev HSM token, PKI, config, database and registry.

    With `daemon_role`, a new configuration's daemon connects as that login role (made
    a member of hocba_daemon), and `dsn` becomes its `migrate_dsn` (the schema owner).

    With `services_port`, the dev PKI gets its OCSP responder, CRLs and TSA on that
    port (daemon/dev/pki_services.py): new certificates name them, and a new
    configuration signs at B-LTA.
    """
    ids = school_ids(schools)
    dsns = (_as_role(dsn, daemon_role), dsn) if daemon_role else (dsn, None)
    base, result = await asyncio.to_thread(_provision, base, ids, dsns, amqp_url, services_port)
    settings = load_settings(base / CONFIG_NAME)
    owner_dsn = settings.database.for_migrations().dsn
    await ensure_database(owner_dsn)
    conn = await asyncpg.connect(owner_dsn)
    try:
        await migrate.migrate(conn)
        if settings.database.migrate_dsn:
            await ensure_login_role(conn, urlsplit(settings.database.dsn).username or "", "daemon")
        for school_id in ids:
            alg, public = _ensure_consent_key(base, school_id)
            await register_school(conn, school_id, alg, public)
        await register_signers(conn, TOKEN_LABEL, result.signers)
    finally:
        await conn.close()
    return DevEnv(base, settings, ids, result.signers)


def _as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


async def ensure_login_role(conn: asyncpg.Connection, role: str, service: str) -> None:
    """A dev login role (no password: dev servers trust loopback) in the service's group."""
    if not await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role):
        quoted = await conn.fetchval("SELECT quote_ident($1)", role)
        try:
            await conn.execute(f"CREATE ROLE {quoted} LOGIN")
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            pass  # another dev init or test run made it just now
    await migrate.grant(conn, role, service)


def _provision(
    base: Path,
    ids: tuple[str, ...],
    dsns: tuple[str, str | None],
    amqp_url: str,
    services_port: int | None = None,
) -> tuple[Path, pki.ProvisionResult]:
    """The blocking part: files, the SoftHSM token, keys generated inside it."""
    base = base.resolve()
    (base / "consent").mkdir(parents=True, exist_ok=True, mode=0o700)
    pin = _secret_file(base / "hsm-pin")
    so_pin = _secret_file(base / "hsm-so-pin")
    env = softhsm.ensure_softhsm_token(base / "hsm", TOKEN_LABEL, pin, so_pin)
    if services_port is not None:
        pki_services.configure(base / "pki", services_port)
    result = pki.provision(base, token_label=TOKEN_LABEL, pin=pin, schools=ids, env=env)
    services = pki_services.load_config(base / "pki")
    if services is not None:
        pki_services.ensure_tsa(base / "pki")
    config = base / CONFIG_NAME
    if not config.exists():
        text = _config_text(base, env, dsns, amqp_url, result.root_pem)
        if services is not None:
            level = f'level = "B-LTA"\ntsa_url = "{services.tsa_url}"\n'
            text = text.replace("[signing]\n", f"[signing]\n{level}", 1)
        config.write_text(text, "utf-8")
    return base, result


async def register_school(
    conn: asyncpg.Connection, school_id: str, alg: Alg, key: bytes, name: str | None = None
) -> None:
    await conn.execute(
        """INSERT INTO schools (school_id, name, consent_alg, consent_key)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (school_id) DO UPDATE
           SET consent_alg = EXCLUDED.consent_alg, consent_key = EXCLUDED.consent_key""",
        school_id,
        name or f"Trường Tiểu học {school_id}",
        alg,
        key,
    )


async def register_signers(
    conn: asyncpg.Connection, token_label: str, signers: tuple[pki.ProvisionedSigner, ...]
) -> None:
    await conn.executemany(
        """INSERT INTO signers (school_id, signer_id, stage, token_label, key_label,
                                cert_serial, cert_not_after)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (school_id, signer_id) DO UPDATE
           SET stage = EXCLUDED.stage, token_label = EXCLUDED.token_label,
               key_label = EXCLUDED.key_label, cert_serial = EXCLUDED.cert_serial,
               cert_not_after = EXCLUDED.cert_not_after""",
        [
            (
                s.school_id,
                s.signer_id,
                s.stage.value,
                token_label,
                s.key_label,
                s.cert_serial,
                s.not_after,
            )
            for s in signers
        ],
    )


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if the server does not have it yet."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(dsn)
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await admin.close()
    else:
        await conn.close()


def load_consent_signer(base: Path, school_id: str) -> ConsentSigner:
    data = json.loads((base / "consent" / f"{school_id}.json").read_text("utf-8"))
    return ConsentSigner(school_id, data["alg"], bytes.fromhex(data["private_key"]))


def _ensure_consent_key(base: Path, school_id: str) -> tuple[Alg, bytes]:
    """The school's consent key: Ed25519 for odd ids, HS256 for even, as both exist."""
    path = base / "consent" / f"{school_id}.json"
    if not path.exists():
        alg: Alg = "EdDSA" if int(school_id) % 2 else "HS256"
        private = (
            Ed25519PrivateKey.generate().private_bytes_raw()
            if alg == "EdDSA"
            else secrets.token_bytes(32)
        )
        _write_private(path, json.dumps({"alg": alg, "private_key": private.hex()}))
    signer = load_consent_signer(base, school_id)
    if signer.alg == "HS256":
        return signer.alg, signer.private_key
    public = Ed25519PrivateKey.from_private_bytes(signer.private_key).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return signer.alg, raw


def ministry_token(base: Path) -> str:
    """The dev bearer token shared by the daemon and the simulator (created if absent)."""
    path = base / "ministry-token"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32))
    return path.read_text("utf-8").strip()


def _secret_file(path: Path) -> str:
    if not path.exists():
        _write_private(path, "".join(secrets.choice("0123456789") for _ in range(8)))
    return path.read_text("utf-8").strip()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _config_text(
    base: Path, env: dict[str, str], dsns: tuple[str, str | None], amqp_url: str, root: Path
) -> str:
    env_lines = "\n".join(f'{k} = "{v}"' for k, v in env.items())
    dsn, migrate_dsn = dsns
    owner = f'migrate_dsn = "{migrate_dsn}"\n' if migrate_dsn else ""
    return f"""# Written by `hocba-signer dev init`; a development configuration.
instance = "hocba-dev"

[database]
dsn = "{dsn}"
{owner}
[amqp]
url = "{amqp_url}"

[hsm]
module = "{softhsm.SOFTHSM_MODULE}"
token_label = "{TOKEN_LABEL}"
pin_file = "{base / "hsm-pin"}"

[hsm.env]
{env_lines}

[signing]
trust_roots = ["{root}"]

[store]
path = "{base / "documents"}"
"""
