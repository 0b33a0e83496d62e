"""llama.cpp's server (llama-cpp-python 0.3.x) on its own, with nothing in front: the evidence behind the quirk
table in README.md and the facade's `[upstreams.*.compat]` fixes.

Every test here talks to llama.cpp directly and to nothing else: each documents the upstream, none is a
guarantee of the facade. What a client of the facade sees instead is tested in test_upstream_quirks.py and the
client tiers (test_openai_sdk.py, test_langchain.py).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.harness import TOOL_TURN, LlamaServer

pytestmark = pytest.mark.e2e

HI: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]


def test_llama_cpp_refuses_a_request_id_that_is_not_a_uuid_with_an_empty_400(direct: httpx.Client) -> None:
    """starlette-context's RequestIdPlugin validates X-Request-ID. The facade must not forward a client's arbitrary
    id as is (test_upstream_quirks.py::test_a_client_request_id_that_is_not_a_uuid_still_gets_its_answer)."""
    body = {"model": "phi4_fast", "messages": HI, "max_tokens": 2}
    refused = direct.post("/v1/chat/completions", json=body, headers={"x-request-id": "frontend-42"})
    assert (refused.status_code, refused.content) == (400, b"")
    accepted = direct.post(
        "/v1/chat/completions", json=body, headers={"x-request-id": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    )
    assert accepted.status_code == 200


def test_llama_cpp_ignores_max_completion_tokens_and_runs_until_its_context_is_full(direct: httpx.Client) -> None:
    body = {"model": "phi4_fast", "messages": HI, "max_completion_tokens": 3, "stream": True}
    pieces = 0
    with direct.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            pieces += '"content": "' in line
            if pieces == 20:
                break  # far past the cap of 3; leaving closes the stream and llama.cpp stops
    assert pieces == 20


def test_llama_cpp_answers_500_with_its_file_paths_to_an_assistant_turn_whose_content_is_null(
    direct: httpx.Client,
) -> None:
    body = {"model": "phi4_fast", "max_tokens": 3, "messages": TOOL_TURN}
    refused = direct.post("/v1/chat/completions", json=body)
    assert refused.status_code == 500
    assert "Input should be a valid string" in refused.text and "llama_cpp/server/app.py" in refused.text
    omitted = [TOOL_TURN[0], {k: v for k, v in TOOL_TURN[1].items() if k != "content"}, TOOL_TURN[2]]
    assert direct.post("/v1/chat/completions", json={**body, "messages": omitted}).status_code == 200


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
