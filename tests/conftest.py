"""Shared fixtures: the bundled demo upstream and the facade, each a real process on a real socket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import support
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer

MODELS_EUROPE = ("aya_expanse_multilingual", "phi4_fast", "mistral_balanced", "qwen_coder", "gemma3_multimodal")


def facade_config(upstream_url: str, extra: str = "") -> str:
    """The suite's facade config: the five models-europe ids, aliases in both response modes, a capped
    alias with defaults, and a model on an upstream that is down."""
    served = "".join(f'[[models]]\nname = "{name}"\n' for name in MODELS_EUROPE)
    dead_port = support.free_port()
    return f"""
[server]
max_body_bytes = 65536

[upstreams.default]
url = "{upstream_url}"
api_key = "upstream-secret"
read_timeout_seconds = 1.5
stream_read_timeout_seconds = 1.5

[upstreams.down]
url = "http://127.0.0.1:{dead_port}"
connect_timeout_seconds = 1

{served}
[[models]]
name = "capibara6"
upstream_model = "aya_expanse_multilingual"

[[models]]
name = "capibara6-renamed"
upstream_model = "aya_expanse_multilingual"
response_model = "alias"

[[models]]
name = "capibara6-brief"
upstream_model = "phi4_fast"
max_tokens = 3
defaults = {{ temperature = 0.2 }}

[[models]]
name = "offline"
upstream = "down"

[cors]
allow_origins = ["https://www.capibara6.com", "http://localhost:3000"]
{extra}
"""


class Upstream:
    """The demo upstream, plus what it recorded of the requests it received."""

    def __init__(self, server: support.ServerProcess) -> None:
        self.url = server.url

    def requests(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = httpx.get(self.url + "/_demo/requests").json()
        return records

    def request(self, request_id: str) -> dict[str, Any]:
        return next(record for record in self.requests() if record["request_id"] == request_id)

    def wait_for_outcome(self, request_id: str, outcome: str, within: float = 10.0) -> dict[str, Any]:
        """Poll until the upstream reports `outcome` for the request (a bounded wait, not a timing check)."""
        deadline = time.monotonic() + within
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            record = next((r for r in self.requests() if r["request_id"] == request_id), {})
            if record.get("outcome") == outcome:
                return record
            time.sleep(0.05)
        raise AssertionError(f"upstream never saw {outcome!r} for {request_id}: {record}")


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def upstream(session_dir: Path) -> Iterator[Upstream]:
    with support.running(support.demo_upstream(session_dir, "--chunk-delay", "0")) as server:
        yield Upstream(server)


@pytest.fixture(scope="session")
def facade_url(session_dir: Path, upstream: Upstream) -> Iterator[str]:
    with support.running(support.facade(session_dir, facade_config(upstream.url))) as server:
        yield server.url


@pytest.fixture
def client(facade_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=facade_url + "/v1", api_key="client-key", max_retries=0, timeout=20) as sdk:
        yield sdk


@pytest.fixture
def http(facade_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=facade_url, timeout=20) as raw:
        yield raw


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[RedisServer]:
    """One Debian redis-server for the session; tests keep apart by their own callers or key prefixes."""
    with RedisServer(session_dir).running() as server:
        yield server


@pytest.fixture
def disposable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may `kill -9` and start again on the same port."""
    server = RedisServer(tmp_path)
    with server.running():
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One Debian Postgres for the session; each test takes a fresh database (`postgres_server.database()`)."""
    with PostgresServer().running() as server:
        yield server
