"""Several model servers behind one facade, for tests/integration/test_routing.py: the config, a model server
that stalls until told to recover, and what the facade says about itself (its request log, /health, RSS)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests import support
from tests.raw_upstream import RawUpstream, chat_only, http_response

MODEL = "aya_expanse_multilingual"  # a model id the demo upstream serves
HELLO = [{"role": "user", "content": "hola capibara"}]


def fleet_config(
    upstreams: dict[str, str], models: str, api_chat_model: str, routing: str = "", **upstream_keys: str | int | float
) -> str:
    """A facade config: each upstream (name → URL) with the same `upstream_keys`, the `[[models]]` tables as
    given, the model /api/chat uses, and the `[routing]` keys."""
    tables = "".join(support.upstream_config(url, name, **upstream_keys) for name, url in upstreams.items())
    return f'{tables}\n{models}\n[legacy_chat]\nmodel = "{api_chat_model}"\n\n[routing]\n{routing}\n'


def chat(http: httpx.Client, model: str, request_id: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": HELLO, **extra}
    return http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": request_id})


def request_log(server: support.ServerProcess) -> dict[str, dict[str, Any]]:
    """The facade's request log lines (its standard output), by request id."""
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith('{"ts":')]
    return {line["request_id"]: line for line in lines}


def upstream_health(server: support.ServerProcess, name: str) -> dict[str, Any]:
    """What /health says of one upstream: its breaker state and requests in flight among the rest."""
    state: dict[str, Any] = httpx.get(server.url + "/health", timeout=5).json()["upstreams"][name]
    return state


def breaker_becomes(server: support.ServerProcess, name: str, state: str, within: float = 15.0) -> str:
    """Wait (bounded) until /health shows the upstream's breaker in `state`."""
    return support.wait_for(lambda: state if upstream_health(server, name)["breaker"] == state else None, within)


def rss_kib(server: support.ServerProcess) -> int:
    """The facade's resident memory (one worker: the process itself), from /proc."""
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


class StalledUpstream:
    """A model server that accepts every chat request, reads it, and answers nothing until `recover()`;
    then it answers each (the held ones too) with a completion of its own. Health probes get 200 throughout."""

    COMPLETION = json.dumps(
        {"id": "from-the-recovered-upstream", "object": "chat.completion", "created": 1, "model": MODEL, "choices": []}
    ).encode()

    def __init__(self) -> None:
        self._recovered = threading.Event()
        self._raw = RawUpstream(chat_only(self._answer))
        self.url = self._raw.url

    def _answer(self, request: bytes) -> list[bytes]:
        self._recovered.wait(60)  # bounded: a held connection never outlives the test by much
        return http_response(200, self.COMPLETION)

    def recover(self) -> None:
        self._recovered.set()

    def chat_requests(self) -> int:
        return len(self._raw.chat_requests())

    @contextmanager
    def running(self) -> Iterator[StalledUpstream]:
        with self._raw.running():
            try:
                yield self
            finally:
                self.recover()  # let every held request go
