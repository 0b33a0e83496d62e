"""The store's SQL, the same for SQLite and Postgres: each backend is only a `Database` that runs it.

Queries are written with Postgres's numbered parameters (`$1`); the SQLite backend turns them into its
own (`?1`). Lists are ordered by when the facade stored each completion, then its id, and paginated with
`after` by that same key, so a page never skips or repeats a completion stored meanwhile.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from importlib import resources
from typing import Any, Protocol

import msgspec

from . import Order, Page, StoredCompletion

__all__ = ["Database", "SqlStore", "migrate", "migrated_store"]

log = logging.getLogger(__name__)

_COLUMNS = "caller, id, model, created, stored_at, expires_at, completion, messages, metadata"
_LIVE = "(expires_at IS NULL OR expires_at > $2)"  # $2 is always the time now, in seconds
_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")
_metadata_decoder = msgspec.json.Decoder(dict[str, str])
_encode = msgspec.json.Encoder().encode


class Database(Protocol):
    """One backend's connection (or pool): runs statements, in a transaction when asked."""

    async def fetch(self, query: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    async def execute(self, query: str, *args: Any) -> int:
        """Runs `query`; the number of rows it changed."""

    def transaction(self) -> AbstractAsyncContextManager[Database]: ...

    def exclusive(self) -> AbstractAsyncContextManager[Database]:
        """A transaction no other process runs at the same time (for migrations)."""

    async def aclose(self) -> None: ...


async def migrate(database: Database) -> int:
    """Apply the migrations the database has not had, in order, each once; the schema's version now.
    Several processes starting at once: one migrates, the others find it done."""
    async with database.exclusive() as db:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        rows = await db.fetch("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        current = int(rows[0][0])
        for version, name, script in _migrations():
            if version <= current:
                continue
            for statement in _statements(script):
                await db.execute(statement)
            await db.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", version, name)
            log.warning("stored completions: schema migrated to %03d (%s)", version, name)
            current = version
        return current


async def migrated_store(database: Database) -> SqlStore:
    """The store on a just-opened database, its schema migrated; the database closed if that fails."""
    try:
        await migrate(database)
    except BaseException:
        await database.aclose()
        raise
    return SqlStore(database)


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if match := _MIGRATION_NAME.fullmatch(entry.name):
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _statements(script: str) -> list[str]:
    """A migration's statements (`;` at the end of a line ends one; comments dropped)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";\n") if statement.strip(" \n;")]


class SqlStore:
    """The `Store` on any `Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def save(self, completion: StoredCompletion) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                f"INSERT INTO chat_completions ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (caller, id) DO UPDATE SET model = excluded.model, created = excluded.created, "
                "stored_at = excluded.stored_at, expires_at = excluded.expires_at, "
                "completion = excluded.completion, messages = excluded.messages, metadata = excluded.metadata",
                completion.caller,
                completion.id,
                completion.model,
                completion.created,
                completion.stored_at,
                completion.expires_at,
                completion.completion.decode(),
                completion.messages.decode(),
                _encode(completion.metadata).decode(),
            )
            await _replace_metadata(db, completion.caller, completion.id, completion.metadata)

    async def list(
        self, caller: str, model: str | None, metadata: dict[str, str], after: str | None, limit: int, order: Order
    ) -> Page:
        args: list[Any] = [caller, int(time.time())]
        where = ["caller = $1", _LIVE]
        if model is not None:
            args.append(model)
            where.append(f"model = ${len(args)}")
        for key, value in sorted(metadata.items()):
            args.extend((key, value))
            where.append(
                "EXISTS (SELECT 1 FROM chat_completion_metadata m WHERE m.caller = $1 "
                f"AND m.completion_id = chat_completions.id AND m.key = ${len(args) - 1} AND m.value = ${len(args)})"
            )
        direction, beyond = ("ASC", ">") if order == "asc" else ("DESC", "<")
        if after is not None:
            args.append(after)
            where.append(
                f"(stored_at, id) {beyond} (SELECT stored_at, id FROM chat_completions WHERE caller = $1 "
                f"AND id = ${len(args)})"
            )
        args.append(limit + 1)  # one more than asked: whether there are more
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM chat_completions WHERE {' AND '.join(where)} "
            f"ORDER BY stored_at {direction}, id {direction} LIMIT ${len(args)}",
            *args,
        )
        items = [_completion(row) for row in rows]
        return Page(items[:limit], len(items) > limit)

    async def get(self, caller: str, completion_id: str) -> StoredCompletion | None:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM chat_completions WHERE caller = $1 AND {_LIVE} AND id = $3",
            caller,
            int(time.time()),
            completion_id,
        )
        return _completion(rows[0]) if rows else None

    async def update_metadata(
        self, caller: str, completion_id: str, metadata: dict[str, str]
    ) -> StoredCompletion | None:
        async with self._db.transaction() as db:
            changed = await db.execute(
                f"UPDATE chat_completions SET metadata = $3 WHERE caller = $1 AND {_LIVE} AND id = $4",
                caller,
                int(time.time()),
                _encode(metadata).decode(),
                completion_id,
            )
            if not changed:
                return None
            await _replace_metadata(db, caller, completion_id, metadata)
        return await self.get(caller, completion_id)

    async def delete(self, caller: str, completion_id: str) -> bool:
        async with self._db.transaction() as db:
            deleted = await db.execute(
                f"DELETE FROM chat_completions WHERE caller = $1 AND {_LIVE} AND id = $3",
                caller,
                int(time.time()),
                completion_id,
            )
            await _replace_metadata(db, caller, completion_id, {})
        return deleted > 0

    async def list_messages(self, caller: str, completion_id: str) -> bytes | None:
        rows = await self._db.fetch(
            f"SELECT messages FROM chat_completions WHERE caller = $1 AND {_LIVE} AND id = $3",
            caller,
            int(time.time()),
            completion_id,
        )
        return str(rows[0][0]).encode() if rows else None

    async def purge_expired(self) -> int:
        async with self._db.transaction() as db:
            now = int(time.time())
            await db.execute(
                "DELETE FROM chat_completion_metadata WHERE EXISTS (SELECT 1 FROM chat_completions c "
                "WHERE c.caller = chat_completion_metadata.caller AND c.id = chat_completion_metadata.completion_id "
                "AND c.expires_at <= $1)",
                now,
            )
            return await db.execute("DELETE FROM chat_completions WHERE expires_at <= $1", now)

    async def aclose(self) -> None:
        await self._db.aclose()


async def _replace_metadata(db: Database, caller: str, completion_id: str, metadata: dict[str, str]) -> None:
    await db.execute(
        "DELETE FROM chat_completion_metadata WHERE caller = $1 AND completion_id = $2", caller, completion_id
    )
    for key, value in metadata.items():
        await db.execute(
            "INSERT INTO chat_completion_metadata (caller, completion_id, key, value) VALUES ($1, $2, $3, $4)",
            caller,
            completion_id,
            key,
            value,
        )


def _completion(row: Sequence[Any]) -> StoredCompletion:
    caller, completion_id, model, created, stored_at, expires_at, completion, messages, metadata = row
    return StoredCompletion(
        caller,
        completion_id,
        model,
        int(created),
        int(stored_at),
        None if expires_at is None else int(expires_at),
        str(completion).encode(),
        str(messages).encode(),
        _metadata_decoder.decode(metadata),
    )
