"""Completions, embeddings and the Responses API through the facade, with the real openai SDK: the same rules
as chat (aliases, validation of what the facade reads, limits, the request log, cancel on disconnect), the
endpoints each upstream declares, and a continued response sent back to the upstream that created it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from capibara_facade.config.callers import hash_key
from tests import support
from tests.conftest import Upstream

OPEN_KEY = "endpoints-open-key"
LIMITED_KEY = "endpoints-limited-key"
TOKENS_KEY = "endpoints-tokens-key"
ALL_ENDPOINTS = '["chat", "completions", "embeddings", "responses"]'


class Served:
    """The facade in front of two demo upstreams (`a`, `b`) serving every endpoint, and one serving only chat."""

    def __init__(self, url: str, a: Upstream, b: Upstream, log_path: Path) -> None:
        self.url, self.a, self.b, self.log_path = url, a, b, log_path

    def sdk(self, key: str = OPEN_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=20)

    def post(self, path: str, body: bytes | dict[str, Any], key: str = OPEN_KEY) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        return httpx.post(self.url + path, content=content, headers=headers, timeout=20)

    def logged(self, request_id: str) -> dict[str, Any]:
        def line() -> dict[str, Any] | None:
            entries = [json.loads(text) for text in self.log_path.read_text().splitlines() if text.startswith("{")]
            return next((entry for entry in entries if entry.get("request_id") == request_id), None)

        return support.wait_for(line)

    def upstream_of(self, request_id: str) -> Upstream:
        """Which demo upstream received the request."""
        return next(
            upstream for upstream in (self.a, self.b) if any(r["request_id"] == request_id for r in upstream.requests())
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("endpoints")
    log_path = directory / "requests.log"
    with (
        support.running(support.demo_upstream(directory, "--chunk-delay", "0")) as a,
        support.running(support.demo_upstream(directory, "--chunk-delay", "0")) as b,
    ):
        config = f"""
[upstreams.a]
url = "{a.url}"
endpoints = {ALL_ENDPOINTS}
[upstreams.b]
url = "{b.url}"
endpoints = {ALL_ENDPOINTS}
[upstreams.chat-only]
url = "{a.url}"

[[models]]
name = "phi4_fast"
upstream = "a"
[[models]]
name = "writer"
upstream = "a"
upstream_model = "phi4_fast"
[[models]]
name = "writer-renamed"
upstream = "a"
upstream_model = "phi4_fast"
response_model = "alias"
[[models]]
name = "writer-brief"
upstream = "a"
upstream_model = "phi4_fast"
max_tokens = 3
[[models]]
name = "twins"
targets = [{{ upstream = "a", upstream_model = "qwen_coder" }}, {{ upstream = "b", upstream_model = "qwen_coder" }}]
[[models]]
name = "chatty"
upstream = "chat-only"
upstream_model = "phi4_fast"

[legacy_chat]
model = "phi4_fast"

[callers.open]
key_sha256 = "{hash_key(OPEN_KEY)}"

[callers.limited]
key_sha256 = "{hash_key(LIMITED_KEY)}"
requests_per_minute = 2

[callers.tokens]
key_sha256 = "{hash_key(TOKENS_KEY)}"
tokens_per_minute = 1000

[request_log]
path = "{log_path}"
"""
        with support.running(support.facade(directory, config)) as facade:
            yield Served(facade.url, Upstream(a), Upstream(b), log_path)


def _sent(upstream: Upstream, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(upstream.request(request_id)["body"])
    return body


# --- completions ----------------------------------------------------------------------------------------


def test_a_completion_through_an_alias_reaches_the_upstream_model(served: Served) -> None:
    with served.sdk() as sdk:
        raw = sdk.completions.with_raw_response.create(model="writer", prompt="hola capibara")
    completion = raw.parse()
    assert completion.choices[0].text == "Hola! You said: hola capibara"
    assert completion.model == "phi4_fast"  # response_model = "upstream": the upstream's bytes untouched
    assert _sent(served.a, raw.headers["x-request-id"])["model"] == "phi4_fast"
    logged = served.logged(raw.headers["x-request-id"])
    assert (logged["route"], logged["model"], logged["prompt_tokens"]) == ("completions", "writer", 2)


def test_a_streamed_completion_yields_the_whole_text_and_ends_with_done(served: Served) -> None:
    with served.sdk() as sdk:
        whole = sdk.completions.create(model="writer", prompt="hola capibara").choices[0].text
        chunks = list(sdk.completions.create(model="writer", prompt="hola capibara", stream=True))
    assert len(chunks) > 3
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == whole
    raw = served.post("/v1/completions", {"model": "writer", "prompt": "hola", "stream": True})
    assert raw.text.endswith("data: [DONE]\n\n")


def test_streamed_completion_usage_reaches_only_the_clients_that_asked_for_it(served: Served) -> None:
    with served.sdk() as sdk:
        asked = list(
            sdk.completions.create(model="writer", prompt="hola", stream=True, stream_options={"include_usage": True})
        )
        raw = sdk.completions.with_raw_response.create(model="writer", prompt="hola", stream=True)
        not_asked = list(raw.parse())
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in not_asked)
    request_id = raw.headers["x-request-id"]
    assert _sent(served.a, request_id)["stream_options"] == {"include_usage": True}  # the facade asked for it
    assert served.logged(request_id)["completion_tokens"] > 0


def test_an_alias_caps_a_completions_max_tokens(served: Served) -> None:
    with served.sdk() as sdk:
        raw = sdk.completions.with_raw_response.create(model="writer-brief", prompt="hola capibara", max_tokens=50)
    assert _sent(served.a, raw.headers["x-request-id"])["max_tokens"] == 3
    assert raw.parse().choices[0].finish_reason == "length"


def test_an_alias_in_alias_mode_names_itself_in_completions_embeddings_and_responses(served: Served) -> None:
    with served.sdk() as sdk:
        assert sdk.completions.create(model="writer-renamed", prompt="hola").model == "writer-renamed"
        chunks = list(sdk.completions.create(model="writer-renamed", prompt="hola", stream=True))
        assert {chunk.model for chunk in chunks} == {"writer-renamed"}
        assert sdk.embeddings.create(model="writer-renamed", input="hola").model == "writer-renamed"
        assert sdk.responses.create(model="writer-renamed", input="hola").model == "writer-renamed"
        with sdk.responses.stream(model="writer-renamed", input="hola") as stream:
            final = stream.get_final_response()
        assert final.model == "writer-renamed"


# --- embeddings ------------------------------------------------------------------------------------------


def test_embeddings_return_one_vector_per_input_in_the_encoding_the_sdk_chose(served: Served) -> None:
    with served.sdk() as sdk:
        raw = sdk.embeddings.with_raw_response.create(model="writer", input=["hola", "capibara"])
    embeddings = raw.parse()
    assert [item.index for item in embeddings.data] == [0, 1]
    assert all(len(item.embedding) == 8 for item in embeddings.data)
    assert embeddings.data[0].embedding != embeddings.data[1].embedding
    sent = _sent(served.a, raw.headers["x-request-id"])
    assert (sent["model"], sent["encoding_format"]) == ("phi4_fast", "base64")  # what the SDK asks for
    logged = served.logged(raw.headers["x-request-id"])
    assert (logged["route"], logged["prompt_tokens"], logged["completion_tokens"]) == ("embeddings", 2, 0)


# --- responses -------------------------------------------------------------------------------------------


def test_a_response_answers_with_its_output_text_and_usage(served: Served) -> None:
    with served.sdk() as sdk:
        raw = sdk.responses.with_raw_response.create(model="writer", input="hola capibara", instructions="brief")
    response = raw.parse()
    assert response.output_text == "Hola! You said: hola capibara"
    assert response.usage is not None and response.usage.output_tokens == 5
    logged = served.logged(raw.headers["x-request-id"])
    assert (logged["route"], logged["prompt_tokens"], logged["completion_tokens"]) == ("responses", 3, 5)


def test_a_streamed_response_relays_typed_events_without_done_and_counts_its_usage(served: Served) -> None:
    with served.sdk() as sdk:
        raw = sdk.responses.with_raw_response.create(model="writer", input="hola capibara", stream=True)
        events = list(raw.parse())
        request_id = raw.headers["x-request-id"]
    types = [event.type for event in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == (
        "Hola! You said: hola capibara"
    )
    logged = served.logged(request_id)
    assert (logged["completion_tokens"], logged["stream"]) == (5, True)
    assert logged["ttft_ms"] is not None
    raw = served.post("/v1/responses", {"model": "writer", "input": "hola", "stream": True})
    assert "event: response.output_text.delta\ndata: " in raw.text and "[DONE]" not in raw.text
    sent = _sent(served.a, raw.headers["x-request-id"])
    assert "stream_options" not in sent  # no chat-only rewrite


def test_a_continued_response_goes_to_the_upstream_that_created_the_first(served: Served) -> None:
    created: dict[str, Upstream] = {}  # response id → the upstream that made it
    with served.sdk() as sdk:
        for _ in range(60):  # until each of the two upstreams has made some (the balancer picks at random)
            raw = sdk.responses.with_raw_response.create(model="twins", input="hola")
            created[raw.parse().id] = served.upstream_of(raw.headers["x-request-id"])
            if len(set(map(id, created.values()))) == 2 and len(created) >= 6:
                break
        assert len(set(map(id, created.values()))) == 2
        for response_id, origin in created.items():  # the other upstream would answer 404: it does not know it
            raw = sdk.responses.with_raw_response.create(model="twins", input="y?", previous_response_id=response_id)
            assert raw.parse().previous_response_id == response_id
            assert served.upstream_of(raw.headers["x-request-id"]) is origin


def test_a_streamed_response_is_continued_on_its_upstream_too(served: Served) -> None:
    with served.sdk() as sdk:
        for _ in range(6):  # each time, the other upstream would answer the continuation 404
            raw = sdk.responses.with_raw_response.create(model="twins", input="hola", stream=True)
            first = next(event for event in raw.parse() if event.type == "response.completed").response
            origin = served.upstream_of(raw.headers["x-request-id"])
            raw = sdk.responses.with_raw_response.create(
                model="twins", input="y?", previous_response_id=first.id, stream=True
            )
            last = list(raw.parse())[-1]
            assert last.type == "response.completed" and last.response.previous_response_id == first.id
            assert served.upstream_of(raw.headers["x-request-id"]) is origin


# --- the same rules as chat ------------------------------------------------------------------------------


def test_a_model_whose_upstream_serves_only_chat_answers_404_endpoint_not_supported(served: Served) -> None:
    with served.sdk() as sdk:
        with pytest.raises(openai.NotFoundError) as caught:
            sdk.embeddings.create(model="chatty", input="hola")
        assert sdk.chat.completions.create(model="chatty", messages=[{"role": "user", "content": "hola"}]).choices
    assert caught.value.code == "endpoint_not_supported"
    assert "chatty" in caught.value.message and "/v1/embeddings" in caught.value.message
    request_id = caught.value.response.headers["x-request-id"]
    assert all(record["request_id"] != request_id for record in served.a.requests())  # never forwarded


def test_an_unknown_model_is_404_model_not_found_on_every_endpoint(served: Served) -> None:
    with served.sdk() as sdk:
        for call in (
            lambda: sdk.completions.create(model="gpt-17", prompt="x"),
            lambda: sdk.embeddings.create(model="gpt-17", input="x"),
            lambda: sdk.responses.create(model="gpt-17", input="x"),
        ):
            with pytest.raises(openai.NotFoundError) as caught:
                call()
            assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "writer", "prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ("/v1/completions", {"model": "writer"}, "prompt"),
        ("/v1/completions", {"model": "writer", "prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/embeddings", {"model": "writer"}, "input"),
        ("/v1/embeddings", {"model": "writer", "input": []}, "input"),
        ("/v1/embeddings", {"model": "writer", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/responses", {"model": "writer", "input": "x", "max_output_tokens": 5}, "max_output_tokens"),
        ("/v1/responses", {"model": "writer", "input": "x", "previous_response_id": 7}, "previous_response_id"),
        ("/v1/responses", {"input": "x"}, "model"),
    ],
)
def test_a_field_the_facade_reads_is_validated_as_the_spec_types_it(
    served: Served, path: str, body: dict[str, Any], param: str
) -> None:
    answer = served.post(path, body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


def test_every_other_field_reaches_the_upstream_byte_for_byte(served: Served) -> None:
    body = b'{"model": "phi4_fast", "prompt": "caf\\u00e9", "top_k": 40, "vendor": {"x": 1.50}}'
    answer = served.post("/v1/completions", body)
    assert answer.status_code == 200
    assert served.a.request(answer.headers["x-request-id"])["body"] == body.decode()


def test_past_its_requests_per_minute_a_key_gets_rate_limit_error_on_embeddings(served: Served) -> None:
    with served.sdk(LIMITED_KEY) as sdk:
        for _ in range(2):
            assert sdk.embeddings.create(model="writer", input="hola").data
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.embeddings.create(model="writer", input="hola")
    assert caught.value.response.headers["retry-after"]
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "2"


def test_a_completion_that_could_use_more_tokens_than_the_key_has_is_refused(served: Served) -> None:
    with served.sdk(TOKENS_KEY) as sdk:
        assert sdk.completions.create(model="writer", prompt="hola", max_tokens=50).choices
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.completions.create(model="writer", prompt="hola", max_tokens=5000)  # reserves prompt + 5000
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "1000"


def test_deleting_a_model_is_a_permission_error(served: Served) -> None:
    with served.sdk() as sdk, pytest.raises(openai.PermissionDeniedError) as caught:
        sdk.models.delete("writer")
    assert caught.value.status_code == 403 and caught.value.code == "insufficient_permissions"
    wrong_key = httpx.delete(served.url + "/v1/models/writer", headers={"authorization": "Bearer wrong"})
    assert wrong_key.status_code == 401  # who is asking comes first


def test_a_client_leaving_a_completion_stream_closes_the_upstream_request(served: Served) -> None:
    body = {"model": "writer", "prompt": "hola " * 30, "stream": True, "demo": {"chunk_delay": 0.2}}
    headers = {"authorization": f"Bearer {OPEN_KEY}"}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, headers=headers, timeout=20) as answer:
        request_id = answer.headers["x-request-id"]
        next(answer.iter_raw())  # the first event arrived; then the client goes away
    served.a.wait_for_outcome(request_id, "client_disconnected")
    assert served.logged(request_id)["outcome"] == "client_gone"
