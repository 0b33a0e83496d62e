"""Stored chat completions: what `store: true` keeps, and the routes that serve it back to its caller.

`Store` is what the routes and the recorder use; `sqlite.py` (the default, a file) and `postgres.py` (for
several replicas) run the same SQL (`sql.py`) and the same versioned migrations (`migrations/NNN_*.sql`).
`open_store(config)` opens the one the config names and brings its schema up to date.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from ..config import StoreConfig

__all__ = ["Order", "Page", "Store", "StoredCompletion", "open_store"]

Order = Literal["asc", "desc"]


class StoredCompletion(msgspec.Struct, frozen=True):
    caller: str
    id: str
    model: str  # the public name the client asked for
    created: int  # the completion's own `created`
    stored_at: int  # microseconds since the epoch
    expires_at: int | None  # seconds since the epoch
    completion: bytes  # the ChatCompletion as JSON, without `metadata`
    messages: bytes  # the request's messages, a JSON array
    metadata: dict[str, str]


class Page(msgspec.Struct, frozen=True):
    items: list[StoredCompletion]
    has_more: bool


class Store(Protocol):
    async def save(self, completion: StoredCompletion) -> None:
        """Store `completion`, replacing one of the same caller and id."""

    async def list(
        self, caller: str, model: str | None, metadata: dict[str, str], after: str | None, limit: int, order: Order
    ) -> Page: ...

    async def get(self, caller: str, completion_id: str) -> StoredCompletion | None: ...

    async def update_metadata(
        self, caller: str, completion_id: str, metadata: dict[str, str]
    ) -> StoredCompletion | None: ...

    async def delete(self, caller: str, completion_id: str) -> bool: ...

    async def list_messages(self, caller: str, completion_id: str) -> bytes | None:
        """The completion's request messages (a JSON array), None for an id the caller has not stored."""

    async def purge_expired(self) -> int: ...

    async def aclose(self) -> None: ...


async def open_store(config: StoreConfig) -> Store:
    """The configured store, its schema migrated."""
    if config.url is not None:
        from .postgres import open_postgres

        return await open_postgres(config.url)
    from .sqlite import open_sqlite

    return await open_sqlite(config.path)
