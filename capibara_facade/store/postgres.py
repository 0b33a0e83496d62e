"""The store in Postgres (asyncpg): one database that every replica of the facade shares.

A small pool per worker process; each statement takes a connection for its own length, each transaction
one for the transaction's. Migrations run under an advisory lock, so replicas starting together apply each
once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from .sql import SqlStore, migrated_store

__all__ = ["PostgresDatabase", "open_postgres"]

_MIGRATION_LOCK = 0x63617069  # any constant; the same in every facade ("capi")


async def open_postgres(url: str) -> SqlStore:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    return await migrated_store(PostgresDatabase(pool))


class PostgresDatabase:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def fetch(self, query: str, *args: Any) -> Sequence[Sequence[Any]]:
        return [tuple(row) for row in await self._pool.fetch(query, *args)]

    async def execute(self, query: str, *args: Any) -> int:
        return _changed(await self._pool.execute(query, *args))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        async with self._pool.acquire() as connection, connection.transaction():
            yield _Connection(connection)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[_Connection]:
        async with self.transaction() as connection:
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            yield connection

    async def aclose(self) -> None:
        await self._pool.close()


class _Connection:
    """One connection, inside its transaction."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def fetch(self, query: str, *args: Any) -> Sequence[Sequence[Any]]:
        return [tuple(row) for row in await self._connection.fetch(query, *args)]

    async def execute(self, query: str, *args: Any) -> int:
        return _changed(await self._connection.execute(query, *args))

    def transaction(self) -> Any:  # a transaction is not nested
        raise NotImplementedError

    def exclusive(self) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


def _changed(status: str) -> int:
    """The rows a statement changed, from asyncpg's command tag (`DELETE 2`, `INSERT 0 1`, `CREATE TABLE`)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
