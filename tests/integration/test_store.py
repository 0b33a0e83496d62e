"""The completion store on both backends, SQLite and Debian's real Postgres: the same SQL, the same answers."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from capibara_facade.config import StoreConfig
from capibara_facade.config.store import SQLITE_FILE
from capibara_facade.store import Store, StoredCompletion, open_store
from tests.postgres_server import PostgresServer

T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreConfig]:
    if request.param == "sqlite":
        yield StoreConfig(enabled=True, path=str(tmp_path / "store"))
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        yield StoreConfig(enabled=True, url=server.database())


def with_store(config: StoreConfig, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = await open_store(config)
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def completion(
    caller: str, number: int, model: str = "capibara6", metadata: dict[str, str] | None = None
) -> StoredCompletion:
    completion_id = f"chatcmpl-{number}"
    document = f'{{"id":"{completion_id}","object":"chat.completion","created":1,"model":"m","choices":[]}}'
    return StoredCompletion(
        caller,
        completion_id,
        model,
        1,
        1_000_000 + number,
        None,
        document.encode(),
        f'[{{"id":"{completion_id}-0","role":"user","content":"hi {number}"}}]'.encode(),
        metadata or {},
    )


def test_completions_are_listed_in_the_order_they_were_stored_and_paginated_with_after(
    store_config: StoreConfig,
) -> None:
    async def work(store: Store) -> tuple[list[str], ...]:
        for number in range(5):
            await store.save(completion("team", number))
        first = await store.list("team", None, {}, None, 2, "asc")
        second = await store.list("team", None, {}, first.items[-1].id, 2, "asc")
        last = await store.list("team", None, {}, second.items[-1].id, 2, "asc")
        newest = await store.list("team", None, {}, None, 2, "desc")
        assert (first.has_more, second.has_more, last.has_more) == (True, True, False)
        return tuple([item.id for item in page.items] for page in (first, second, last, newest))

    pages = with_store(store_config, work)
    assert pages == (
        ["chatcmpl-0", "chatcmpl-1"],
        ["chatcmpl-2", "chatcmpl-3"],
        ["chatcmpl-4"],
        ["chatcmpl-4", "chatcmpl-3"],
    )


def test_a_caller_lists_gets_updates_and_deletes_only_its_own_completions(store_config: StoreConfig) -> None:
    async def work(store: Store) -> None:
        await store.save(completion("team", 1))
        await store.save(completion("other", 2))
        assert [item.id for item in (await store.list("team", None, {}, None, 20, "asc")).items] == ["chatcmpl-1"]
        assert await store.get("team", "chatcmpl-2") is None
        assert await store.update_metadata("team", "chatcmpl-2", {"k": "v"}) is None
        assert await store.list_messages("team", "chatcmpl-2") is None
        assert await store.delete("team", "chatcmpl-2") is False
        assert await store.get("other", "chatcmpl-2") is not None

    with_store(store_config, work)


def test_the_model_and_every_metadata_pair_filter_the_list(store_config: StoreConfig) -> None:
    async def work(store: Store) -> list[list[str]]:
        await store.save(completion("team", 1, "capibara6", {"topic": "a", "lang": "es"}))
        await store.save(completion("team", 2, "capibara6", {"topic": "a", "lang": "en"}))
        await store.save(completion("team", 3, "phi4_fast", {"topic": "a", "lang": "es"}))
        filters = [("capibara6", {}), (None, {"topic": "a", "lang": "es"}), ("capibara6", {"lang": "es"})]
        pages = [await store.list("team", model, metadata, None, 20, "asc") for model, metadata in filters]
        return [[item.id for item in page.items] for page in pages]

    assert with_store(store_config, work) == [
        ["chatcmpl-1", "chatcmpl-2"],
        ["chatcmpl-1", "chatcmpl-3"],
        ["chatcmpl-1"],
    ]


def test_updated_metadata_replace_the_old_in_the_completion_and_in_the_filters(store_config: StoreConfig) -> None:
    async def work(store: Store) -> None:
        await store.save(completion("team", 1, metadata={"topic": "a"}))
        updated = await store.update_metadata("team", "chatcmpl-1", {"topic": "b"})
        assert updated is not None and updated.metadata == {"topic": "b"}
        assert (await store.list("team", None, {"topic": "a"}, None, 20, "asc")).items == []
        assert len((await store.list("team", None, {"topic": "b"}, None, 20, "asc")).items) == 1

    with_store(store_config, work)


def test_a_deleted_completion_is_gone_with_its_messages(store_config: StoreConfig) -> None:
    async def work(store: Store) -> None:
        await store.save(completion("team", 1, metadata={"topic": "a"}))
        assert await store.list_messages("team", "chatcmpl-1") is not None
        assert await store.delete("team", "chatcmpl-1") is True
        assert await store.get("team", "chatcmpl-1") is None
        assert await store.list_messages("team", "chatcmpl-1") is None
        assert (await store.list("team", None, {"topic": "a"}, None, 20, "asc")).items == []

    with_store(store_config, work)


def test_an_expired_completion_is_neither_served_nor_kept(store_config: StoreConfig) -> None:
    async def work(store: Store) -> int:
        expired = completion("team", 1)
        await store.save(StoredCompletion(**{**_fields(expired), "expires_at": 1}))
        await store.save(completion("team", 2))
        assert await store.get("team", "chatcmpl-1") is None
        assert [item.id for item in (await store.list("team", None, {}, None, 20, "asc")).items] == ["chatcmpl-2"]
        return await store.purge_expired()

    assert with_store(store_config, work) == 1


def test_opening_the_store_again_applies_no_migration_twice(store_config: StoreConfig) -> None:
    with_store(store_config, lambda store: store.save(completion("team", 1)))
    kept = with_store(store_config, lambda store: store.get("team", "chatcmpl-1"))
    assert kept is not None and kept.messages.startswith(b'[{"id":"chatcmpl-1-0"')
    if store_config.url is None:
        with sqlite3.connect(Path(store_config.path) / SQLITE_FILE) as database:
            assert database.execute("SELECT version, name FROM schema_version").fetchall() == [
                (1, "001_chat_completions.sql")
            ]


def _fields(stored: StoredCompletion) -> dict[str, object]:
    return {field: getattr(stored, field) for field in stored.__struct_fields__}
