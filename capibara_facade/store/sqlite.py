"""The store in SQLite (aiosqlite): one file under `[store] path`, no server to run.

WAL lets readers go on while one writes, and each worker process has its own connection to the same file
(`busy_timeout` makes a writer wait for another's short transaction instead of failing). Within a process
the one connection is used by one statement or transaction at a time (an asyncio lock), so a transaction
never sees another coroutine's statements.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from ..config.store import SQLITE_FILE
from .sql import SqlStore, migrated_store

__all__ = ["SqliteDatabase", "open_sqlite"]

_NUMBERED = re.compile(r"\$(\d+)")  # Postgres's $1 is SQLite's ?1


async def open_sqlite(directory: str) -> SqlStore:
    # Conversations: readable by the facade alone.
    await asyncio.to_thread(Path(directory).mkdir, mode=0o700, parents=True, exist_ok=True)
    connection = await aiosqlite.connect(Path(directory) / SQLITE_FILE, isolation_level=None)
    # First: workers opening the file together wait for each other (switching to WAL takes a lock too).
    await connection.execute("PRAGMA busy_timeout=5000")
    await connection.execute("PRAGMA journal_mode=WAL")
    await connection.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at each checkpoint, never corrupt
    return await migrated_store(SqliteDatabase(connection))


class SqliteDatabase:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._lock = asyncio.Lock()

    async def fetch(self, query: str, *args: Any) -> Sequence[Sequence[Any]]:
        async with self._lock:
            return await _Locked(self._connection).fetch(query, *args)

    async def execute(self, query: str, *args: Any) -> int:
        async with self._lock:
            return await _Locked(self._connection).execute(query, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Locked]:
        async with self._lock, _Locked(self._connection).began("BEGIN") as locked:
            yield locked

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[_Locked]:
        # IMMEDIATE takes the file's write lock at once: another process migrating waits (busy_timeout).
        async with self._lock, _Locked(self._connection).began("BEGIN IMMEDIATE") as locked:
            yield locked

    async def aclose(self) -> None:
        await self._connection.close()


class _Locked:
    """The connection while this coroutine holds its lock."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def fetch(self, query: str, *args: Any) -> Sequence[Sequence[Any]]:
        async with self._connection.execute(_NUMBERED.sub(r"?\1", query), args) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, query: str, *args: Any) -> int:
        async with self._connection.execute(_NUMBERED.sub(r"?\1", query), args) as cursor:
            return cursor.rowcount

    @asynccontextmanager
    async def began(self, begin: str) -> AsyncIterator[_Locked]:
        await self._connection.execute(begin)
        try:
            yield self
        except BaseException:
            await self._connection.execute("ROLLBACK")
            raise
        await self._connection.execute("COMMIT")

    def transaction(self) -> Any:  # a transaction is not nested
        raise NotImplementedError

    def exclusive(self) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError
