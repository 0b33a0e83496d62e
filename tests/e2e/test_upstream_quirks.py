"""llama.cpp's server (llama-cpp-python 0.3.x) as it really behaves, and what a client of the facade sees instead.

Each test first shows the quirk with a request straight to llama.cpp (the evidence), then sends the same
request through the facade: client mistakes become clear 4xx before they reach the upstream, and what the
upstream does with a valid request is passed through honestly.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.harness import WEATHER_TOOL, LlamaServer

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
    health = via_facade.get("/health")
    assert health.status_code == 200
    assert health.json()["upstreams"]["default"]["reachable"] is True
    assert via_facade.get("/ready").status_code == 200


def test_a_request_id_that_is_not_a_uuid_is_refused_by_llama_cpp_with_an_empty_400(direct: httpx.Client) -> None:
    """starlette-context's RequestIdPlugin validates X-Request-ID. The facade must not forward a client's
    arbitrary id as is (see test_openai_sdk.py::test_with_raw_response_exposes_the_facade_headers)."""
    body = {"model": "phi4_fast", "messages": HI, "max_tokens": 2}
    refused = direct.post("/v1/chat/completions", json=body, headers={"x-request-id": "frontend-42"})
    assert (refused.status_code, refused.content) == (400, b"")
    accepted = direct.post(
        "/v1/chat/completions", json=body, headers={"x-request-id": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    )
    assert accepted.status_code == 200


def test_a_client_request_id_that_is_not_a_uuid_still_gets_its_answer(via_facade: httpx.Client) -> None:
    answer = via_facade.post(
        "/v1/chat/completions",
        json={"model": "phi4_fast", "messages": HI, "max_tokens": 2},
        headers={"x-request-id": "frontend-42"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "frontend-42"


def test_llama_cpp_ignores_max_completion_tokens_and_runs_until_its_context_is_full(direct: httpx.Client) -> None:
    body = {"model": "phi4_fast", "messages": HI, "max_completion_tokens": 3, "stream": True}
    pieces = 0
    with direct.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            pieces += '"content": "' in line
            if pieces == 20:
                break  # far past the cap of 3; leaving closes the stream and llama.cpp stops
    assert pieces == 20


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
def test_llama_cpp_calls_tools_only_for_a_named_tool_choice(
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


TOOL_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in paris?"},
    {
        "role": "assistant",
        "content": None,  # what the openai SDK's users and LangChain send beside tool_calls
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


def test_llama_cpp_answers_500_with_its_file_paths_to_an_assistant_turn_whose_content_is_null(
    direct: httpx.Client,
) -> None:
    body = {"model": "phi4_fast", "max_tokens": 3, "messages": TOOL_TURN}
    refused = direct.post("/v1/chat/completions", json=body)
    assert refused.status_code == 500
    assert "Input should be a valid string" in refused.text and "llama_cpp/server/app.py" in refused.text
    omitted = [TOOL_TURN[0], {k: v for k, v in TOOL_TURN[1].items() if k != "content"}, TOOL_TURN[2]]
    assert direct.post("/v1/chat/completions", json={**body, "messages": omitted}).status_code == 200


def test_an_answer_after_a_tool_result_never_shows_the_client_upstream_file_paths(via_facade: httpx.Client) -> None:
    answer = via_facade.post(
        "/v1/chat/completions", json={"model": "phi4_fast", "max_tokens": 3, "messages": TOOL_TURN}
    )
    assert ".py" not in answer.text and "site-packages" not in answer.text, answer.text
    assert answer.status_code == 200 or error_of(answer)["type"]


def test_llama_cpp_finishes_a_whole_unstreamed_answer_even_when_its_client_has_left(
    llama: LlamaServer, direct: httpx.Client
) -> None:
    """Only streams can be cancelled: a non-streaming generation runs in a worker thread to its end, and the
    next request waits for it. Nothing in front of llama.cpp can change that; a `max_tokens` cap bounds it."""
    log_start = llama.log_size()
    with pytest.raises(httpx.ReadTimeout):
        direct.post(
            "/v1/chat/completions",
            json={"model": "phi4_fast", "max_tokens": 2000, "messages": HI},
            timeout=httpx.Timeout(60, read=0.1),
        )
    assert direct.post("/v1/chat/completions", json={"model": "phi4_fast", "max_tokens": 2, "messages": HI}).is_success
    log = llama.log_since(log_start)
    assert "Disconnected from client" not in log
    assert max(llama.completed_generation_lengths(log)) >= 1999
