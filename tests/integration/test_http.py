"""The facade over raw HTTP: the frontend's /api/chat, CORS, errors, headers, health."""

from __future__ import annotations

import json
import socket
import time
import tomllib
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests import support
from tests.conftest import Upstream, facade_config

HELLO = [{"role": "user", "content": "hola"}]


def _assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


# --- the frontend's POST /api/chat ------------------------------------------------------------------


def test_api_chat_forwards_a_message_with_the_contract_defaults(http: httpx.Client, upstream: Upstream) -> None:
    response = http.post("/api/chat", json={"message": "Hola capibara"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hola! You said: Hola capibara"
    sent = json.loads(upstream.request(response.headers["x-request-id"])["body"])
    assert sent == {
        "model": "aya_expanse_multilingual",
        "messages": [{"role": "user", "content": "Hola capibara"}],
        "temperature": 0.7,
        "max_tokens": 200,
    }


def test_api_chat_honours_model_temperature_max_tokens_system_and_history(
    http: httpx.Client, upstream: Upstream
) -> None:
    history = [{"role": "user", "content": "antes"}, {"role": "assistant", "content": "vale"}]
    body = {"message": "y ahora", "model": "capibara6", "temperature": 0.1, "max_tokens": 4}
    response = http.post("/api/chat", json={**body, "system": "Eres capibara", "messages": history})
    assert response.status_code == 200
    sent = json.loads(upstream.request(response.headers["x-request-id"])["body"])
    assert sent["messages"] == [{"role": "system", "content": "Eres capibara"}, *history, body_message("y ahora")]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("aya_expanse_multilingual", 0.1, 4)


def body_message(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_api_chat_streams_sse_when_asked(http: httpx.Client) -> None:
    with http.stream("POST", "/api/chat", json={"message": "Hola", "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[1][5:])["choices"][0]["delta"]["content"] == "Hola!"


def test_api_chat_without_a_message_is_a_400_naming_it(http: httpx.Client) -> None:
    error = _assert_envelope(http.post("/api/chat", json={"model": "capibara6"}), 400)
    assert error["param"] == "message"


def test_api_chat_with_an_unknown_model_is_a_404(http: httpx.Client) -> None:
    _assert_envelope(http.post("/api/chat", json={"message": "hola", "model": "nope"}), 404, "model_not_found")


# --- CORS for www.capibara6.com ------------------------------------------------------------------------


def test_a_browser_preflight_from_the_frontend_origin_is_allowed(http: httpx.Client) -> None:
    response = http.options(
        "/api/chat",
        headers={
            "Origin": "https://www.capibara6.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == "https://www.capibara6.com"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_a_cross_origin_answer_carries_the_allow_origin_header(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={"message": "hola"}, headers={"Origin": "http://localhost:3000"})
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


def test_an_origin_not_in_the_config_is_not_allowed(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={"message": "hola"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


# --- errors are always OpenAI's envelope, never a 500 or a traceback ---------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param(b'{"model": "capibara6", "messages": [', None, id="malformed-json"),
        pytest.param(b"[1, 2]", None, id="not-an-object"),
        pytest.param(b"", None, id="empty-body"),
        pytest.param(b'{"messages": [{"role": "user", "content": "x"}]}', "model", id="missing-model"),
        pytest.param(b'{"model": "capibara6"}', "messages", id="missing-messages"),
        pytest.param(b'{"model": "capibara6", "messages": [{"role": "boss", "content": "x"}]}', "messages[0].role"),
        pytest.param(b'{"model": "capibara6", "messages": [{"role": "user"}]}', "messages[0].content"),
        pytest.param(b'{"model": 7, "messages": []}', "model", id="model-not-a-string"),
        pytest.param(b'{"model": "capibara6", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
        pytest.param(
            b'{"model": "capibara6", "messages": [{"role": "user", "content": "x"}], "stream": "y"}', "stream"
        ),
    ],
)
def test_a_bad_request_body_is_a_400_naming_the_field(http: httpx.Client, body: bytes, param: str | None) -> None:
    response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error = _assert_envelope(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_an_error_answer_carries_the_request_id_too(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "gpt-17", "messages": HELLO}, headers={"X-Request-ID": "r-1"}
    )
    _assert_envelope(response, 404, "model_not_found")
    assert response.headers["x-request-id"] == "r-1"


def test_a_declared_oversized_body_is_refused_with_413_before_it_is_read(facade_url: str) -> None:
    port = int(facade_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Declares a gigabyte, sends two bytes: the answer must come without waiting for the rest.
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: f\r\nContent-Length: 1000000000\r\n\r\n{}")
        response = b""
        while not response.endswith(b"}"):  # the envelope is one JSON object
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {response!r}"
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"]["code"] == "request_too_large"


def _chat_body_of_exactly(size: int) -> bytes:
    """A valid chat request padded with JSON whitespace to exactly `size` bytes."""
    start, end = b'{"model": "capibara6", "messages": [{"role": "user", "content": "hola"}]', b"}"
    return start + b" " * (size - len(start) - len(end)) + end


@pytest.mark.parametrize(
    ("over_the_limit_by", "status"), [pytest.param(0, 200, id="at-the-limit"), pytest.param(1, 413, id="one-over")]
)
def test_a_chunked_body_without_content_length_is_held_to_the_limit_as_it_arrives(
    http: httpx.Client, over_the_limit_by: int, status: int
) -> None:
    limit = tomllib.loads(facade_config("http://127.0.0.1:1"))["server"]["max_body_bytes"]
    body = _chat_body_of_exactly(limit + over_the_limit_by)
    pieces = (body[start : start + 4096] for start in range(0, len(body), 4096))
    response = http.post("/v1/chat/completions", content=pieces, headers={"content-type": "application/json"})
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        _assert_envelope(response, 413, "request_too_large")


def test_an_unknown_path_is_a_404_envelope(http: httpx.Client) -> None:
    _assert_envelope(http.get("/v1/engines"), 404, "not_found")


def test_the_wrong_method_is_a_405_envelope_naming_the_allowed_ones(http: httpx.Client) -> None:
    response = http.put("/v1/chat/completions")
    _assert_envelope(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"  # GET lists stored completions


# --- headers ---------------------------------------------------------------------------------------------


def test_a_uuid_request_id_follows_the_request_upstream_and_back(http: httpx.Client, upstream: Upstream) -> None:
    request_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    body = {"model": "capibara6", "messages": HELLO}
    response = http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id
    assert upstream.request(request_id)["body"]


def test_any_other_request_id_comes_back_unchanged_and_goes_upstream_in_stable_uuid_form(
    http: httpx.Client, upstream: Upstream
) -> None:
    body = {"model": "capibara6", "messages": HELLO}
    first = http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": "frontend-42"})
    second = http.post("/v1/chat/completions", json=body, headers={"X-Request-ID": "frontend-42"})
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == "frontend-42"
    sent = [record["request_id"] for record in upstream.requests()[-2:]]
    assert sent[0] == sent[1] == uuid.uuid5(uuid.UUID("5f0e2bb4-7a52-4c1e-9d6c-6361706962c6"), "frontend-42").hex


@pytest.mark.parametrize("stream", [False, True], ids=["whole-answer", "stream"])
def test_the_upstream_gets_its_own_key_never_the_clients(http: httpx.Client, upstream: Upstream, stream: bool) -> None:
    headers = {"Authorization": "Bearer client-secret"}
    body = {"model": "capibara6", "messages": HELLO, "stream": stream}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        response.read()
    assert upstream.request(response.headers["x-request-id"])["authorization"] == "Bearer upstream-secret"


def test_a_model_served_under_its_own_name_reaches_the_upstream_as_the_clients_exact_bytes(
    http: httpx.Client, upstream: Upstream
) -> None:
    body = b'{ "model" : "phi4_fast", "messages":[{"role":"user","content":"caf\\u00e9 \xc3\xa9"}], "x":1.50}'
    response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert upstream.request(response.headers["x-request-id"])["body"].encode() == body


# --- health ------------------------------------------------------------------------------------------------


def test_health_reports_each_upstreams_last_probed_state(http: httpx.Client) -> None:
    http.get("/ready")  # probes every upstream; /health itself never waits for a probe
    response = http.get("/health")
    assert response.status_code == 200
    upstreams = response.json()["upstreams"]
    assert upstreams["default"]["reachable"] is True
    assert upstreams["down"]["reachable"] is False


def test_ready_is_200_while_any_upstream_is_reachable(http: httpx.Client) -> None:
    assert http.get("/ready").status_code == 200


def test_ready_is_503_while_no_upstream_is_reachable(tmp_path: Path) -> None:
    config = support.upstream_config(f"http://127.0.0.1:{support.free_port()}")
    with support.running(support.facade(tmp_path, config)) as facade:
        response = httpx.get(facade.url + "/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert httpx.get(facade.url + "/health").status_code == 200


def _wait_until_upstream_shows(facade_url: str, reachable: bool, within: float = 15.0) -> None:
    """Poll until /ready and /health both report the upstream as `reachable` (a bounded wait, not a timing check)."""
    deadline = time.monotonic() + within
    seen: tuple[int, object] = (0, None)
    while time.monotonic() < deadline:
        ready = httpx.get(facade_url + "/ready", timeout=5)
        health = httpx.get(facade_url + "/health", timeout=5).json()["upstreams"]["default"]
        seen = (ready.status_code, health)
        if ready.status_code == (200 if reachable else 503) and health["reachable"] is reachable:
            return
        time.sleep(0.05)
    raise AssertionError(f"/ready and /health never showed reachable={reachable} within {within}s: {seen}")


def test_health_and_ready_follow_an_upstream_going_down_and_coming_back(tmp_path: Path) -> None:
    model_server = support.demo_upstream(tmp_path)
    config = support.upstream_config(model_server.url, probe_interval_seconds=0.2)
    with support.running(model_server), support.running(support.facade(tmp_path, config)) as facade:
        _wait_until_upstream_shows(facade.url, reachable=True)
        model_server.stop()
        _wait_until_upstream_shows(facade.url, reachable=False)
        model_server.start()  # the same port again
        _wait_until_upstream_shows(facade.url, reachable=True)


def test_the_upstream_is_probed_at_most_once_per_interval_however_often_health_and_ready_are_asked(
    tmp_path: Path,
) -> None:
    """A load balancer asking every second must not turn health checks into load on the model server."""
    served = tmp_path / "probe-target"
    served.mkdir()
    (served / "health").write_text("ok")
    port = support.free_port()
    argv = [support.PYTHON, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(served), str(port)]
    probe_target = support.ServerProcess(argv, port, tmp_path / "probe-target.log")  # logs every request it serves
    config = support.upstream_config(probe_target.url, probe_interval_seconds=60)
    with support.running(probe_target, ready_path="/"), support.running(support.facade(tmp_path, config)) as facade:
        for _ in range(10):
            assert httpx.get(facade.url + "/ready").status_code == 200
            assert httpx.get(facade.url + "/health").json()["upstreams"]["default"]["reachable"] is True
        probes = probe_target.log_path.read_text().count('"GET /health HTTP/1.1"')
    assert probes == 2  # the start-up report's own probe, then the facade's one for this interval


# --- API keys -------------------------------------------------------------------------------------------


def test_with_api_keys_configured_only_a_listed_bearer_key_is_served(tmp_path: Path, upstream: Upstream) -> None:
    config = facade_config(upstream.url, '[auth]\napi_keys = ["sk-capibara-1", "sk-capibara-2"]\n')
    with support.running(support.facade(tmp_path, config)) as facade:
        for key, allowed in (("sk-capibara-2", True), ("sk-wrong", False)):
            with openai.OpenAI(base_url=facade.url + "/v1", api_key=key, max_retries=0) as sdk:
                if allowed:
                    assert sdk.chat.completions.create(model="capibara6", messages=HELLO).choices  # type: ignore[arg-type]
                else:
                    with pytest.raises(openai.AuthenticationError):
                        sdk.chat.completions.create(model="capibara6", messages=HELLO)  # type: ignore[arg-type]
        response = httpx.post(facade.url + "/api/chat", json={"message": "hola"})
        _assert_envelope(response, 401, "invalid_api_key")
        # The key is checked before the body is read: a stranger's oversized body costs no buffer.
        huge = httpx.post(facade.url + "/api/chat", content=b"x" * 100_000)
        _assert_envelope(huge, 401, "invalid_api_key")
