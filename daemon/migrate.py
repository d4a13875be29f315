"""Versioned SQL migrations, applied in order under an advisory lock, then the roles.

Migrations run as the schema owner (`database.migrate_dsn`); after them `roles.sql`
(re)grants the services' group roles, so the privileges of every table, old or new,
are written in one file.
"""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

from daemon.errors import ConfigError

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every instance.
_LOCK_KEY = 0x68_6F_63_62_61  # "hocba"

ROLES = {"daemon": "hocba_daemon", "packager": "hocba_packager", "verifier": "hocba_verifier"}


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped, in order."""
    found = []
    for entry in resources.files("daemon.migrations").iterdir():
        if entry.name.endswith(".sql") and entry.name[:1].isdigit():
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def roles_sql() -> str:
    return resources.files("daemon.migrations").joinpath("roles.sql").read_text("utf-8")


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing, then the grants; safe when several instances start at once."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in available():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
            log.info("Applied migration %s.", name)
            applied_now.append(name)
        try:
            async with conn.transaction():
                await conn.execute(roles_sql())
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ConfigError(
                "The migration role may not create or grant the roles hocba_daemon, "
                "hocba_packager and hocba_verifier: migrate once as a role with CREATEROLE "
                f"(or create them, NOLOGIN, as a superuser) ({exc})."
            ) from exc
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def grant(conn: asyncpg.Connection, login_role: str, service: str) -> None:
    """Make `login_role` (which must exist) a member of the group role of `service`."""
    group = ROLES[service]
    exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", login_role)
    if not exists:
        raise ConfigError(f"No role {login_role}: create it first (createuser --pwprompt).")
    quote = await conn.fetchval("SELECT quote_ident($1)", login_role)
    await conn.execute(f"GRANT {group} TO {quote}")
    log.info("Role %s is now a member of %s.", login_role, group)
