"""llama.cpp's server (llama-cpp-python 0.3.x) as it really behaves, and what a client of the facade sees instead.

Each test first shows the quirk with a request straight to llama.cpp (the evidence), then sends the same
request through the facade: client mistakes become clear 4xx before they reach the upstream, and what the
upstream does with a valid request is passed through honestly. Quirks shown only against llama.cpp, with
nothing in front, are in test_llama_cpp_upstream.py.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests import support
from tests.e2e.harness import TOOL_TURN, WEATHER_TOOL

pytestmark = pytest.mark.e2e

HI: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
JSON_HEADERS = {"content-type": "application/json"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_an_unknown_model_is_a_404_although_llama_cpp_would_answer_it_with_its_first_model(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {"model": "gpt-17", "messages": HI, "max_tokens": 2}
    upstream = direct.post("/v1/chat/completions", json=body)
    assert upstream.status_code == 200
    assert upstream.json()["model"] == "gpt-17"  # it even echoes the unknown name back
    answer = via_facade.post("/v1/chat/completions", json=body)
    assert answer.status_code == 404
    assert error_of(answer)["code"] == "model_not_found"


def test_missing_messages_is_a_400_although_llama_cpp_would_answer_200(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {"model": "phi4_fast", "max_tokens": 2}
    upstream = direct.post("/v1/chat/completions", json=body)
    assert upstream.status_code == 200 and upstream.json()["choices"][0]["message"]["content"]
    answer = via_facade.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "messages"


def test_invalid_json_is_a_400_although_llama_cpp_answers_a_plain_text_500(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    broken = b'{"model": "phi4_fast", "messages": ['
    upstream = direct.post("/v1/chat/completions", content=broken, headers=JSON_HEADERS)
    assert upstream.status_code == 500
    assert upstream.headers["content-type"].startswith("text/plain")
    assert upstream.text == "Internal Server Error"
    answer = via_facade.post("/v1/chat/completions", content=broken, headers=JSON_HEADERS)
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "invalid_json"


def test_a_mistyped_field_is_a_400_naming_it_although_llama_cpp_answers_500_with_its_file_paths(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {"model": "phi4_fast", "messages": HI, "temperature": "hot"}
    upstream = direct.post("/v1/chat/completions", json=body)
    assert upstream.status_code == 500
    assert "llama_cpp/server/app.py" in upstream.json()["error"]["message"]
    answer = via_facade.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "temperature"
    assert ".py" not in answer.text


def test_health_reports_llama_cpp_reachable_through_its_models_list_as_it_has_no_health_endpoint(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    assert direct.get("/health").status_code == 404
    assert direct.get("/v1/models").status_code == 200

    # The facade probes in the background; while llama.cpp is busy generating for an earlier test, a probe can
    # time out, so wait (bounded) for the next one to answer.
    def answered() -> dict[str, object] | None:
        probed: dict[str, object] = via_facade.get("/health").json()["upstreams"]["default"]
        return probed if probed["reachable"] else None

    probed = support.wait_for(answered, within=15)
    # The facade counts any status under 500 as reachable: only the status shows the probe found its path.
    assert (probed["reachable"], probed["status"], probed["error"]) == (True, 200, None)
    assert via_facade.get("/ready").status_code == 200


def test_a_client_request_id_that_is_not_a_uuid_still_gets_its_answer(via_facade: httpx.Client) -> None:
    answer = via_facade.post(
        "/v1/chat/completions",
        json={"model": "phi4_fast", "messages": HI, "max_tokens": 2},
        headers={"x-request-id": "frontend-42"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "frontend-42"


def test_n_is_ignored_by_llama_cpp_and_the_facade_passes_its_single_choice_through(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {"model": "phi4_fast", "messages": HI, "max_tokens": 2, "n": 2}
    assert len(direct.post("/v1/chat/completions", json=body).json()["choices"]) == 1
    assert len(via_facade.post("/v1/chat/completions", json=body).json()["choices"]) == 1


def test_include_usage_is_ignored_by_llama_cpp_so_no_stream_carries_a_usage_chunk(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {
        "model": "phi4_fast",
        "messages": HI,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for client in (direct, via_facade):
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
        chunks = [json.loads(event) for event in events if event != "[DONE]"]
        assert len(chunks) == 5  # role, 3 tokens, finish
        assert all(chunk["choices"] and "usage" not in chunk for chunk in chunks)


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_auto_and_required_tool_choice_get_text_from_llama_cpp_and_the_facade_passes_it_through(
    tool_choice: str, direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {"model": "qwen_coder", "messages": HI, "max_tokens": 4, "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    for client in (direct, via_facade):
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        assert choice["finish_reason"] == "length"
        assert choice["message"].get("tool_calls") is None and choice["message"]["content"]


def test_logprobs_without_top_logprobs_come_back_null_from_llama_cpp(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {"model": "phi4_fast", "messages": HI, "max_tokens": 2, "logprobs": True}
    for client in (direct, via_facade):
        assert client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"] is None


def test_an_assistant_tool_call_turn_with_null_content_is_answered_not_refused_with_a_500(
    via_facade: httpx.Client,
) -> None:
    """What llama.cpp alone answers with a 500 and its file paths (test_llama_cpp_upstream.py): through the facade
    (`empty_content_for_tool_calls`), the tool loop gets its answer."""
    answer = via_facade.post(
        "/v1/chat/completions", json={"model": "phi4_fast", "max_tokens": 3, "messages": TOOL_TURN}
    )
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["message"]["content"] and choice["finish_reason"] == "length"
    assert ".py" not in answer.text and "site-packages" not in answer.text
