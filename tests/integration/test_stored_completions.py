"""Stored chat completions through the real openai SDK: `create(store=True, metadata=…)` streamed and not,
then `list` (each filter, pagination), `retrieve`, `update`, `delete` and `messages.list` — the same suite on
SQLite and on Debian's real Postgres. Each key sees only its own; two facades on one Postgres share them.

Completions are written in the background after the answer is sent: a test waits (bounded) until one is
there. The demo upstream's ids depend on the model and messages only, so each test asks something new.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from capibara_facade.config.callers import hash_key
from capibara_facade.config.store import SQLITE_FILE
from tests import support
from tests.conftest import Upstream, facade_config
from tests.postgres_server import PostgresServer

TEAM_KEY, OTHER_KEY = "sk-team-" + "t" * 24, "sk-other-" + "o" * 24


def _extra(store: str) -> str:
    return f"""
[callers.team]
key_sha256 = "{hash_key(TEAM_KEY)}"
[callers.other]
key_sha256 = "{hash_key(OTHER_KEY)}"
[public]
enabled = true

[store]
enabled = true
{store}
"""


def _store_line(backend: str, directory: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f'path = "{directory / "store"}"'
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return f'url = "{server.database()}"'


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def facade_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[str]:
    directory = tmp_path_factory.mktemp(f"stored-{request.param}")
    config = facade_config(upstream.url, _extra(_store_line(request.param, directory, request)))
    with support.running(support.facade(directory, config)) as server:
        yield server.url


def sdk(facade_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=facade_url + "/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def team(facade_url: str) -> Iterator[openai.OpenAI]:
    with sdk(facade_url, TEAM_KEY) as client:
        yield client


def ask(client: openai.OpenAI, text: str, **options: Any) -> ChatCompletion:
    return client.chat.completions.create(
        model="capibara6", messages=[{"role": "user", "content": text}], store=True, **options
    )


def stored(client: openai.OpenAI, completion_id: str) -> ChatCompletion:
    """The stored completion, once the background write has made it (a bounded wait)."""

    def found() -> ChatCompletion | None:
        try:
            return client.chat.completions.retrieve(completion_id)
        except openai.NotFoundError:
            return None

    return support.wait_for(found)


def unique() -> str:
    return uuid.uuid4().hex


def test_a_stored_completion_is_retrieved_as_it_was_answered_with_its_metadata(team: openai.OpenAI) -> None:
    answer = ask(team, f"hola {unique()}", metadata={"topic": "greeting"})
    kept = stored(team, answer.id)
    assert kept.choices[0].message.content == answer.choices[0].message.content
    assert kept.choices[0].finish_reason == answer.choices[0].finish_reason
    assert kept.usage == answer.usage
    assert kept.metadata == {"topic": "greeting"}


def test_a_stored_stream_is_retrieved_as_one_completion_assembled_from_its_chunks(team: openai.OpenAI) -> None:
    chunks = list(
        team.chat.completions.create(
            model="capibara6",
            messages=[{"role": "user", "content": f"cuéntame {unique()}"}],
            store=True,
            stream=True,
            metadata={"kind": "stream"},
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    kept = stored(team, chunks[0].id)
    assert text and kept.choices[0].message.content == text
    assert kept.choices[0].message.role == "assistant"
    assert kept.choices[0].finish_reason == next(
        c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason
    )
    # The client did not ask for the usage chunk; the facade's own copy of the usage is stored.
    assert kept.usage is not None and kept.usage.completion_tokens > 0
    assert kept.metadata == {"kind": "stream"}


def test_list_filters_by_model_and_metadata_and_pages_with_after_and_limit(team: openai.OpenAI) -> None:
    run = unique()
    ids = [ask(team, f"{run} {n}", metadata={"run": run, "parity": str(n % 2)}).id for n in range(5)]
    other_model = team.chat.completions.create(
        model="phi4_fast", messages=[{"role": "user", "content": run}], store=True, metadata={"run": run}
    )
    stored(team, other_model.id)

    def listed(**filters: Any) -> list[str]:
        return [completion.id for completion in team.chat.completions.list(metadata={"run": run}, **filters)]

    assert listed(model="capibara6") == ids  # in the order they were stored
    assert listed(model="capibara6", order="desc") == ids[::-1]
    assert listed(model="phi4_fast") == [other_model.id]
    assert [c.id for c in team.chat.completions.list(metadata={"run": run, "parity": "0"})] == ids[0::2]
    first = team.chat.completions.list(model="capibara6", metadata={"run": run}, limit=2)
    assert [c.id for c in first.data] == ids[:2] and first.has_more
    second = team.chat.completions.list(model="capibara6", metadata={"run": run}, limit=2, after=ids[1])
    assert [c.id for c in second.data] == ids[2:4]
    assert listed(model="capibara6", limit=2) == ids  # the SDK follows the pages to the end


def test_update_replaces_the_metadata_and_delete_removes_the_completion(team: openai.OpenAI) -> None:
    answer = ask(team, f"borra {unique()}", metadata={"state": "draft"})
    stored(team, answer.id)
    updated = team.chat.completions.update(answer.id, metadata={"state": "reviewed"})
    assert updated.id == answer.id and updated.metadata == {"state": "reviewed"}
    assert team.chat.completions.retrieve(answer.id).metadata == {"state": "reviewed"}
    deleted = team.chat.completions.delete(answer.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (answer.id, True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        team.chat.completions.retrieve(answer.id)


def test_messages_list_gives_the_request_messages_with_ids_and_pages(team: openai.OpenAI) -> None:
    marker = unique()
    answer = team.chat.completions.create(
        model="capibara6",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": f"parts {marker}"}]},
        ],
        store=True,
    )
    stored(team, answer.id)
    messages = team.chat.completions.messages.list(answer.id)
    assert [(m.role, m.content) for m in messages.data] == [("system", "Be brief."), ("user", f"parts {marker}")]
    assert messages.data[1].content_parts is not None and messages.data[1].content_parts[0].text == f"parts {marker}"
    first = team.chat.completions.messages.list(answer.id, limit=1)
    assert [m.content for m in first.data] == ["Be brief."] and first.has_more
    rest = team.chat.completions.messages.list(answer.id, limit=1, after=first.data[0].id)
    assert [m.content for m in rest.data] == [f"parts {marker}"] and not rest.has_more
    newest = team.chat.completions.messages.list(answer.id, order="desc", limit=1)
    assert [m.role for m in newest.data] == ["user"]


def test_another_key_cannot_see_update_or_delete_a_completion(team: openai.OpenAI, facade_url: str) -> None:
    answer = ask(team, f"mío {unique()}", metadata={"owner": "team"})
    stored(team, answer.id)
    with sdk(facade_url, OTHER_KEY) as other:
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.retrieve(answer.id)
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.update(answer.id, metadata={"owner": "other"})
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.delete(answer.id)
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.messages.list(answer.id)
        assert list(other.chat.completions.list(metadata={"owner": "team"})) == []
    assert team.chat.completions.retrieve(answer.id).metadata == {"owner": "team"}


def test_a_bad_limit_or_order_is_a_400_naming_the_parameter(facade_url: str) -> None:
    auth = {"Authorization": f"Bearer {TEAM_KEY}"}
    for query, param in (("limit=0", "limit"), ("limit=many", "limit"), ("order=newest", "order")):
        response = httpx.get(f"{facade_url}/v1/chat/completions?{query}", headers=auth)
        assert response.status_code == 400, query
        assert response.json()["error"]["param"] == param
    assert httpx.get(f"{facade_url}/v1/chat/completions?limit=1000", headers=auth).status_code == 200


def test_another_callers_id_is_a_404_in_openais_envelope(team: openai.OpenAI, facade_url: str) -> None:
    answer = ask(team, f"sobre {unique()}")
    stored(team, answer.id)
    response = httpx.get(
        f"{facade_url}/v1/chat/completions/{answer.id}", headers={"Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert response.headers["x-request-id"]


def test_a_completion_without_store_is_not_stored(team: openai.OpenAI) -> None:
    unstored = team.chat.completions.create(model="capibara6", messages=[{"role": "user", "content": unique()}])
    later = ask(team, unique())
    stored(team, later.id)  # written after the one before it, had that one been queued
    with pytest.raises(openai.NotFoundError):
        team.chat.completions.retrieve(unstored.id)


def test_store_and_metadata_are_not_sent_upstream(team: openai.OpenAI, upstream: Upstream) -> None:
    request_id = str(uuid.uuid4())
    ask(team, unique(), metadata={"topic": "x"}, extra_headers={"X-Request-ID": request_id})
    sent = json.loads(upstream.request(request_id)["body"])
    assert "store" not in sent and "metadata" not in sent and sent["messages"]


def test_public_callers_have_no_stored_completions(facade_url: str) -> None:
    """Requests without a key (the public tier: the SDK always sends one, so raw HTTP here) get a 401."""
    for path in ("/v1/chat/completions", "/v1/chat/completions/chatcmpl-any", "/v1/chat/completions/x/messages"):
        response = httpx.get(facade_url + path)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "authentication_error"


def test_post_on_the_list_path_still_creates_completions(facade_url: str) -> None:
    response = httpx.post(
        f"{facade_url}/v1/chat/completions",
        json={"model": "capibara6", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
    )
    assert response.status_code == 200 and response.json()["object"] == "chat.completion"
    refused = httpx.put(f"{facade_url}/v1/chat/completions", headers={"Authorization": f"Bearer {TEAM_KEY}"})
    assert refused.status_code == 405


def test_two_facades_on_one_postgres_share_the_stored_completions(
    tmp_path: Path, upstream: Upstream, postgres_server: PostgresServer
) -> None:
    config = facade_config(upstream.url, _extra(f'url = "{postgres_server.database()}"'))
    with (
        support.running(support.facade(tmp_path, config)) as one,
        support.running(support.facade(tmp_path, config)) as two,
        sdk(one.url, TEAM_KEY) as through_one,
        sdk(two.url, TEAM_KEY) as through_two,
    ):
        answer = ask(through_one, f"compartido {unique()}", metadata={"via": "one"})
        kept = stored(through_two, answer.id)
        assert kept.metadata == {"via": "one"}
        assert [c.id for c in through_two.chat.completions.list(metadata={"via": "one"})] == [answer.id]


def test_a_store_that_fails_costs_the_client_nothing_and_is_logged_and_counted(
    tmp_path: Path, upstream: Upstream
) -> None:
    config = facade_config(upstream.url, _extra(f'path = "{tmp_path / "store"}"'))
    with support.running(support.facade(tmp_path, config)) as server, sdk(server.url, TEAM_KEY) as team:
        with sqlite3.connect(tmp_path / "store" / SQLITE_FILE) as database:
            database.execute("DROP TABLE chat_completions")  # every write and read fails from now on
        answer = ask(team, f"sin sitio {unique()}")
        assert answer.choices[0].message.content
        streamed = list(
            team.chat.completions.create(
                model="capibara6", messages=[{"role": "user", "content": unique()}], store=True, stream=True
            )
        )
        assert streamed[-1].choices[0].finish_reason == "stop"

        def failures() -> float | None:
            metrics = httpx.get(server.url + "/metrics").text
            line = next((x for x in metrics.splitlines() if x.startswith("capibara_store_failures_total{")), "")
            count = float(line.rsplit(" ", 1)[-1]) if 'reason="store_error"' in line else 0.0
            return count if count >= 2 else None

        assert support.wait_for(failures) == 2
        assert "a chat completion was not stored (store_error)" in server.log()
        refused = httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {TEAM_KEY}"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
        assert "chat_completions" not in refused.text  # the database's own words stay in the log


def test_a_facade_with_two_workers_opens_one_sqlite_file_and_serves_from_it(tmp_path: Path, upstream: Upstream) -> None:
    """Both workers open (and would migrate) the same file at start; each request on a new connection, so the
    kernel may hand them to either worker (which one is not asserted: it is the kernel's choice)."""
    config = facade_config(upstream.url, _extra(f'path = "{tmp_path / "store"}"')).replace(
        "[server]\n", "[server]\nworkers = 2\n", 1
    )
    run = unique()
    with support.running(support.facade(tmp_path, config)) as server:
        ids = set()
        for n in range(6):
            with sdk(server.url, TEAM_KEY) as team:
                ids.add(ask(team, f"{run} {n}", metadata={"run": run}).id)

        def listed() -> set[str] | None:
            with sdk(server.url, TEAM_KEY) as team:
                found = {completion.id for completion in team.chat.completions.list(metadata={"run": run})}
            return found if found == ids else None

        assert support.wait_for(listed) == ids
