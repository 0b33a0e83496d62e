"""A known mix of requests through the facade, each recorded with the labels and tokens the facade must count
for it (`Sent`). Tokens come from what the clients got back: the usage the upstream reported; for a stream
whose client did not ask for usage (the facade asks the upstream anyway), the words of the demo upstream's
answer, which is how it counts tokens; for a stream the client abandoned, the content events relayed before
it left (what the facade counts when no usage ever came).

Used by tests/integration/test_prometheus.py; each function sends one kind of traffic and returns its records.
"""

from __future__ import annotations

import collections
import http.client
import json
from dataclasses import dataclass

import httpx
import openai
import pytest
from openai import Omit
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionStreamOptionsParam

from tests.conftest import Upstream

PROMPT = "Hola capibara, cuéntame algo de los ríos"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
# The abandoned stream's upstream waits this long between events: the client has left (after the first
# content event) long before the second one would come, so the facade relays exactly one.
ABANDONED_CHUNK_DELAY = 0.5


@dataclass(frozen=True)
class Sent:
    """One request of the mix, with the labels and tokens the facade must count for it."""

    route: str
    model: str | None  # the label; None: the contract does not say (a body refused before its model was read)
    upstream: str  # "" when no upstream was reached
    status: int
    stream: bool
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def words(text: str) -> int:
    return len(text.split())


def exchange(connection: http.client.HTTPConnection, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    connection.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def requests_answered_by_each_worker(workers: dict[int, http.client.HTTPConnection]) -> list[Sent]:
    sent = []
    for pid, connection in workers.items():
        body = json.dumps({"model": "capibara6", "messages": [{"role": "user", "content": f"worker {pid}"}]})
        status, answer = exchange(connection, "POST", "/v1/chat/completions", body.encode())
        assert status == 200, answer
        usage = json.loads(answer)["usage"]
        sent.append(
            Sent("chat", "capibara6", "default", 200, False, usage["prompt_tokens"], usage["completion_tokens"])
        )
    return sent


def whole_completions(sdk: openai.OpenAI) -> list[Sent]:
    sent = []
    for model, max_tokens in (("capibara6", None), ("phi4_fast", None), ("capibara6", 3)):
        reply = sdk.chat.completions.create(model=model, messages=USER, max_tokens=max_tokens or openai.omit)
        assert reply.usage is not None
        usage = reply.usage
        sent.append(Sent("chat", model, "default", 200, False, usage.prompt_tokens, usage.completion_tokens))
    return sent


def streams(sdk: openai.OpenAI) -> list[Sent]:
    sent = []
    for model, include_usage in (("capibara6", True), ("phi4_fast", True), ("capibara6", False), ("phi4_fast", False)):
        options: ChatCompletionStreamOptionsParam | Omit = {"include_usage": True} if include_usage else openai.omit
        text, usage = "", None
        for chunk in sdk.chat.completions.create(model=model, messages=USER, stream=True, stream_options=options):
            usage = chunk.usage or usage
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
        if usage is not None:
            sent.append(Sent("chat", model, "default", 200, True, usage.prompt_tokens, usage.completion_tokens))
        else:  # the facade asked the upstream for usage: it reported the words of the prompt and of its answer
            sent.append(Sent("chat", model, "default", 200, True, words(PROMPT), words(text)))
    # A model whose upstream is not asked for usage: nothing is counted for it, only that usage was missing.
    for _ in sdk.chat.completions.create(model="capibara6-quiet", messages=USER, stream=True):
        pass
    sent.append(Sent("chat", "capibara6-quiet", "default", 200, True))
    return sent


def failures(sdk: openai.OpenAI, http: httpx.Client) -> list[Sent]:
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=USER)
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="capibara6", messages=USER, extra_body={"demo": {"status": 500}})
    with pytest.raises(openai.APIError):  # the error event that ends a stream the upstream broke off
        for _ in sdk.chat.completions.create(
            model="phi4_fast", messages=USER, stream=True, extra_body={"demo": {"drop_after": 3}}
        ):
            pass
    rejected = http.post("/v1/chat/completions", json={"model": "capibara6", "messages": "not a list"})
    assert rejected.status_code == 400, rejected.text
    return [
        Sent("chat", "other", "", 404, False),
        Sent("chat", "capibara6", "default", 500, False),
        Sent("chat", "phi4_fast", "default", 200, True),
        Sent("chat", None, "", 400, False),
    ]


def abandoned_stream(http: httpx.Client, upstream: Upstream, request_id: str) -> Sent:
    """A client that reads the first two events (the role, then the first word) and hangs up."""
    body = {"model": "capibara6", "messages": USER, "stream": True, "demo": {"chunk_delay": ABANDONED_CHUNK_DELAY}}
    with http.stream("POST", "/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}) as response:
        assert response.status_code == 200
        events = []
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
            if len(events) == 2:
                break
    assert events[1]["choices"][0]["delta"]["content"], events
    upstream.wait_for_outcome(request_id, "client_disconnected")
    # Nothing reported usage; the facade counts what it relayed before the client left: one content event.
    return Sent("chat", "capibara6", "default", 200, True, None, 1)


def legacy_chats(http: httpx.Client) -> list[Sent]:
    message = "Hola capibara"
    whole = http.post("/api/chat", json={"message": message})
    assert whole.status_code == 200, whole.text
    usage = whole.json()["usage"]
    text = ""
    with http.stream("POST", "/api/chat", json={"message": message, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                text += "".join(choice["delta"].get("content") or "" for choice in json.loads(line[5:])["choices"])
    return [
        Sent("api_chat", "capibara6", "default", 200, False, usage["prompt_tokens"], usage["completion_tokens"]),
        Sent("api_chat", "capibara6", "default", 200, True, words(message), words(text)),
    ]


def model_lookups(sdk: openai.OpenAI) -> list[Sent]:
    assert "capibara6" in {model.id for model in sdk.models.list()}
    assert sdk.models.retrieve("capibara6").id == "capibara6"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such-model")
    return [Sent("models", "", "", 200, False), Sent("models", "", "", 200, False), Sent("models", "", "", 404, False)]


def send_the_mix(
    workers: dict[int, http.client.HTTPConnection], facade_url: str, upstream: Upstream, abandoned_request_id: str
) -> list[Sent]:
    """Every kind above, in one sequence: a request on each worker's own connection first, then the rest
    through the openai SDK and httpx (whichever worker accepts their connections)."""
    with (
        openai.OpenAI(base_url=facade_url + "/v1", api_key="unused", max_retries=0, timeout=20) as sdk,
        httpx.Client(base_url=facade_url, timeout=20) as http,
    ):
        return [
            *requests_answered_by_each_worker(workers),
            *whole_completions(sdk),
            *streams(sdk),
            *failures(sdk, http),
            abandoned_stream(http, upstream, abandoned_request_id),
            *legacy_chats(http),
            *model_lookups(sdk),
        ]


def expected(sent: list[Sent], *fields: str) -> dict[tuple[str, ...], float]:
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for request in sent:
        counts[tuple(label(getattr(request, field)) for field in fields)] += 1
    return dict(counts)


def label(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
