"""Chat bodies over a real socket: what the spec allows is answered, hostile JSON is a 400 in OpenAI's
envelope (never a 500), and a body the facade refuses never reaches the upstream."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from capibara_facade.config import ServerConfig
from tests.conftest import Upstream

MAX_DEPTH = ServerConfig().max_json_depth  # the suite's facade keeps the default
HELLO = [{"role": "user", "content": "hola"}]
CALL = {"name": "get_time", "arguments": "{}"}


def _post(http: httpx.Client, path: str, body: bytes) -> tuple[httpx.Response, str]:
    request_id = str(uuid.uuid4())  # a UUID goes upstream as it is, so the upstream's record can be looked up
    headers = {"content-type": "application/json", "x-request-id": request_id}
    return http.post(path, content=body, headers=headers), request_id


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_body_nested_a_thousand_deep_is_a_400_naming_the_limit(
    http: httpx.Client, upstream: Upstream, path: str
) -> None:
    vendor = b"[" * 1_000 + b"]" * 1_000
    body = b'{"model": "capibara6", "message": "hola", "messages": [], "vendor": ' + vendor + b"}"
    response, request_id = _post(http, path, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "json_too_deep")
    assert f"more than {MAX_DEPTH} levels" in error["message"]
    assert response.headers["x-request-id"] == request_id
    assert all(record["request_id"] != request_id for record in upstream.requests())


def test_a_repeated_top_level_key_is_a_400_naming_it_and_never_reaches_the_upstream(
    http: httpx.Client, upstream: Upstream
) -> None:
    body = b'{"model": "offline", "messages": [{"role": "user", "content": "x"}], "model": "capibara6"}'
    response, request_id = _post(http, "/v1/chat/completions", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "duplicate_parameter")
    assert all(record["request_id"] != request_id for record in upstream.requests())


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"messages": HELLO, "max_tokens": 0, "max_completion_tokens": 0}, id="token-limits-of-zero"),
        pytest.param(
            {
                "messages": [
                    *HELLO,
                    {"role": "assistant", "content": None, "function_call": CALL},
                    {"role": "function", "name": "get_time", "content": None},
                ]
            },
            id="legacy-function-call-turns-with-null-content",
        ),
        pytest.param({"messages": [{"role": "user", "content": "[{" * 10_000}]}, id="brackets-inside-a-string"),
    ],
)
def test_a_request_the_spec_allows_is_answered(http: httpx.Client, upstream: Upstream, fields: dict[str, Any]) -> None:
    body = json.dumps({"model": "capibara6", **fields}).encode()
    response, request_id = _post(http, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert json.loads(upstream.request(request_id)["body"])["messages"] == fields["messages"]
