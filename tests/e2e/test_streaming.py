"""Streaming against the real upstream: byte-faithful frames, and a client that leaves frees the model server."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.e2e.harness import WEATHER_TOOL, Facade, LlamaServer

pytestmark = pytest.mark.e2e

_COMPLETION_ID = re.compile(rb"cmpl-[0-9a-f-]{36}")  # chatcmpl-… and the tool-call ids' cmpl-…
_CREATED = re.compile(rb'"created": \d+')


def sse_frames(client: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Headers, list[bytes]]:
    """The raw stream, cut into frames at the blank lines; ids and timestamps replaced by placeholders."""
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        raw = b"".join(response.iter_raw())
        headers = response.headers
    normalised = _CREATED.sub(b'"created": 0', _COMPLETION_ID.sub(b"cmpl-ID", raw))
    frames = normalised.split(b"\n\n")
    assert frames[-1] == b"", "the stream must end with a complete frame"
    return headers, frames[:-1]


CASES: dict[str, dict[str, Any]] = {
    "text": {"model": "phi4_fast", "max_tokens": 20, "temperature": 0.8, "seed": 5},
    "logprobs": {"model": "phi4_fast", "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 2},
    "tool call": {
        "model": "qwen_coder",
        "temperature": 0,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_facade_stream_equals_llama_cpp_stream_frame_by_frame(
    case: str, direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {**CASES[case], "stream": True, "messages": [{"role": "user", "content": "weather in madrid"}]}
    upstream_headers, upstream_frames = sse_frames(direct, body)
    facade_headers, facade_frames = sse_frames(via_facade, body)
    assert facade_headers["content-type"] == upstream_headers["content-type"]
    assert facade_headers["content-type"].startswith("text/event-stream")
    assert len(facade_frames) == len(upstream_frames)
    for index, (ours, theirs) in enumerate(zip(facade_frames, upstream_frames, strict=True)):
        assert ours == theirs, f"frame {index} differs"
    # llama.cpp's own quirks are part of what must come through untouched:
    first = json.loads(facade_frames[0].removeprefix(b"data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"  # the role-only first delta
    assert not first["choices"][0]["delta"].get("content")
    assert facade_frames[-1] == b"data: [DONE]"
    last = json.loads(facade_frames[-2].removeprefix(b"data: "))
    assert last["choices"][0]["finish_reason"] in ("length", "tool_calls")
    if case == "tool call":
        calls = [
            json.loads(frame.removeprefix(b"data: "))["choices"][0]["delta"]["tool_calls"]
            for frame in facade_frames[1:-2]
        ]
        # every fragment repeats the call's id and name; the arguments add up to one JSON object
        assert {(call[0]["id"], call[0]["function"]["name"]) for call in calls if call} == {
            ("call__0_get_weather_cmpl-ID", "get_weather")
        }
        arguments = "".join(call[0]["function"]["arguments"] for call in calls if call)
        assert json.loads(arguments)["city"] in ("paris", "madrid", "lisbon")


def test_the_alias_stream_equals_the_stream_of_the_model_it_stands_for(
    direct: httpx.Client, via_facade: httpx.Client
) -> None:
    body = {
        "max_tokens": 15,
        "temperature": 0.7,
        "seed": 9,
        "stream": True,
        "messages": [{"role": "user", "content": "hola"}],
    }
    _, upstream_frames = sse_frames(direct, {**body, "model": "aya_expanse_multilingual"})
    _, facade_frames = sse_frames(via_facade, {**body, "model": "capibara6"})
    assert facade_frames == upstream_frames


def test_a_client_that_drops_a_long_stream_frees_llama_cpp_for_the_next_request(
    facade: Facade, llama: LlamaServer, via_facade: httpx.Client
) -> None:
    """llama.cpp serves one request at a time and (configured so) never interrupts a running one: the next
    request can only be served once the abandoned generation stops. Its log tells which way it stopped:
    cancelled ("Disconnected from client") or run to its end (timings "eval time = ... / N runs")."""
    long_ask = {
        "model": "phi4_fast",
        "max_tokens": 3500,
        "stream": True,
        "messages": [{"role": "user", "content": "tell me a very long story"}],
    }
    log_start = llama.log_size()
    received = 0
    with via_facade.stream("POST", "/v1/chat/completions", json=long_ask) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            received += line.startswith("data: {")
            if received == 5:
                break  # leaving the block closes the connection mid-stream
    assert received == 5

    after = via_facade.post(
        "/v1/chat/completions",
        json={"model": "phi4_fast", "max_tokens": 4, "messages": [{"role": "user", "content": "next please"}]},
    )
    assert after.status_code == 200
    assert after.json()["usage"]["completion_tokens"] == 4

    log = llama.log_since(log_start)
    assert "Disconnected from client" in log, log[-3000:]
    # The next request's short generation ran to its end; the abandoned 3500-token one never did.
    lengths = llama.completed_generation_lengths(log)
    assert lengths and max(lengths) <= 5, lengths
    # Order of events in llama.cpp's log: the abandoned stream was cancelled before the next request ran.
    assert log.index("Disconnected from client") < log.rindex("eval time")
