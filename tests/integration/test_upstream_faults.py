"""What a misbehaving model server sends never reaches the client as it is: headers are allow-listed, broken
answers are 502s, error text and tracebacks stay out of answers and logs, and a request is never run twice."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from tests import support
from tests.raw_upstream import RawUpstream, chat_only, http_response, sse_response

COMPLETION = b'{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[]}'
SECRET_PATH = b"/srv/models/secret-weights/server.py"
CHUNK = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


def _answer(request: bytes) -> list[bytes] | None:
    """The scripted upstream: what it answers depends on the model asked for."""
    model = re.search(rb'"model":\s*"([^"]+)"', request)
    name = model.group(1).decode() if model else ""
    if name == "noisy-headers":
        return http_response(
            200,
            COMPLETION,
            "Access-Control-Allow-Origin: *",
            "Access-Control-Allow-Credentials: true",
            "Set-Cookie: session=upstream",
            "X-Powered-By: llama",
            "Connection: x-hop",
            "X-Hop: 1",
            "X-Ratelimit-Remaining-Requests: 41",
            "OpenAI-Processing-Ms: 12",
        )
    if name == "status-999":
        return http_response(999, COMPLETION)
    if name == "control-character":
        return http_response(200, COMPLETION, "X-Ratelimit-Limit-Requests: 4\x01")
    if name == "plain-429":
        return http_response(429, b"slow down", "Retry-After: 7", content_type="text/plain")
    if name == "busy-503":
        return http_response(503, b"Traceback: " + SECRET_PATH, "Retry-After: 3", content_type="text/plain")
    if name == "closes-without-answer":
        return None
    if name == "error-event":
        error = b'data: {"error": {"message": "CUDA out of memory at ' + SECRET_PATH + b'", "type": "oom"}}\n\n'
        return sse_response(CHUNK, error, b"data: [DONE]\n\n")
    if name == "endless-event":
        return sse_response(CHUNK, b'data: {"choices": "' + b"x" * 300_000)
    return http_response(200, COMPLETION)


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawUpstream]:
    with RawUpstream(chat_only(_answer)).running() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, raw_upstream: RawUpstream) -> Iterator[support.ServerProcess]:
    config = (
        'passthrough_unknown_models_to = "raw"\n[server]\nmax_sse_event_bytes = 65536\n'
        + support.upstream_config(raw_upstream.url, "raw", api_key="upstream-secret")
        + '[[models]]\nname = "m"\nupstream = "raw"\n[legacy_chat]\nmodel = "m"\n'
    )
    with support.running(support.facade(tmp_path_factory.mktemp("faulty"), config)) as server:
        yield server


def _chat(server: support.ServerProcess, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hola"}], **extra}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=20)


def _envelope(response: httpx.Response) -> dict[str, object]:
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_only_allow_listed_upstream_headers_reach_the_client(faulty: support.ServerProcess) -> None:
    response = _chat(faulty, "noisy-headers", stream=False)
    assert response.status_code == 200
    headers = {name.lower() for name in response.headers}
    assert not headers & {"access-control-allow-credentials", "set-cookie", "x-powered-by", "x-hop"}
    assert "access-control-allow-origin" not in headers  # no Origin was sent: the facade's policy adds none
    assert response.headers["x-ratelimit-remaining-requests"] == "41"
    assert response.headers["openai-processing-ms"] == "12"


def test_an_upstream_status_no_http_server_may_send_is_a_502(faulty: support.ServerProcess) -> None:
    response = _chat(faulty, "status-999")
    assert response.status_code == 502
    assert _envelope(response)["type"] == "upstream_error"


def test_an_upstream_header_with_a_control_character_is_a_502(faulty: support.ServerProcess) -> None:
    response = _chat(faulty, "control-character")
    assert response.status_code == 502
    assert _envelope(response)["code"] == "upstream_bad_response"


def test_an_upstream_rate_limit_in_plain_text_stays_a_429_with_its_retry_after(faulty: support.ServerProcess) -> None:
    response = _chat(faulty, "plain-429")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert _envelope(response)["code"] == "rate_limit_exceeded"


def test_an_upstream_503_keeps_its_retry_after_but_never_its_text(faulty: support.ServerProcess) -> None:
    response = _chat(faulty, "busy-503")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert SECRET_PATH.decode() not in response.text
    assert SECRET_PATH.decode() not in faulty.log()


def test_a_request_the_upstream_closed_on_without_answering_is_a_502_and_is_not_sent_again(
    faulty: support.ServerProcess, raw_upstream: RawUpstream
) -> None:
    before = len(raw_upstream.chat_requests())
    response = _chat(faulty, "closes-without-answer")
    assert response.status_code == 502
    assert len(raw_upstream.chat_requests()) == before + 1


def test_an_upstream_error_event_mid_stream_is_replaced_and_its_text_is_neither_shown_nor_logged(
    faulty: support.ServerProcess,
) -> None:
    response = _chat(faulty, "error-event", stream=True)
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hi"
    error = json.loads(events[1])["error"]
    assert error["type"] == "upstream_error" and "middle of the stream" in error["message"]
    assert events[2] == "[DONE]"
    assert SECRET_PATH.decode() not in response.text
    assert SECRET_PATH.decode() not in faulty.log()


def test_an_upstream_event_over_the_size_limit_ends_the_stream_with_an_error_event(
    faulty: support.ServerProcess,
) -> None:
    response = _chat(faulty, "endless-event", stream=True)
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hi"
    assert "larger than the facade accepts" in json.loads(events[-1])["error"]["message"]
    assert b"xxxx" not in response.content
    assert _chat(faulty, "m").status_code == 200  # and the facade serves the next request as before
