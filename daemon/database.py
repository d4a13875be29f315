"""The PostgreSQL pool, with asyncpg's errors translated to ours at this one boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from daemon.errors import ConcurrentUpdate, DatabaseUnavailable
from daemon.settings import DatabaseSettings

# What a retry can fix: the server or network went away, or a serialisation race.
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.QueryCanceledError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn asyncpg and socket errors into DatabaseUnavailable or ConcurrentUpdate."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise ConcurrentUpdate("Another instance stored this change first.") from exc
    except _TRANSIENT as exc:
        raise DatabaseUnavailable(f"Database unavailable: {type(exc).__name__}.") from exc


async def _stateless(conn: asyncpg.Connection) -> None:
    """What the pool runs when a connection comes back: nothing on the wire.

    asyncpg's default sends RESET ALL, UNLISTEN *, CLOSE ALL and releases advisory
    locks on every release: a round trip per check-out, which under load cost the
    daemon as much CPU as storing a signature. Pool connections never carry session
    state here (locks and LISTEN live on `Database.session()` connections), and
    asyncpg still rolls back a transaction left open before calling this.
    """


class Database:
    """A connection pool; `transaction()` hands out one connection inside a transaction.

    Session state (advisory locks held across statements, LISTEN) goes on a
    `session()` connection of its own, never on a pooled one.
    """

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        password = self._settings.resolved_password()
        async with translated():
            self._pool = await asyncpg.create_pool(
                self._settings.dsn,
                password=password.get_secret_value() if password else None,
                min_size=self._settings.pool_min,
                max_size=self._settings.pool_max,
                command_timeout=self._settings.command_timeout_s,
                reset=_stateless,
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("Database pool is not open.")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with translated(), self.pool.acquire() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with translated(), self.pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def session(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection outside the pool, for session state; closing it ends that state."""
        async with translated():
            conn = await connect_once(self._settings)
            try:
                yield conn
            finally:
                await conn.close(timeout=self._settings.command_timeout_s)

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")


async def connect_once(settings: DatabaseSettings) -> asyncpg.Connection:
    """One plain connection, for migrations and the CLI."""
    password = settings.resolved_password()
    async with translated():
        return await asyncpg.connect(
            settings.dsn, password=password.get_secret_value() if password else None
        )
