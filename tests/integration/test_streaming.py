"""Streams pass through byte for byte, event by event, and an abandoned request is closed upstream at once."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests import support
from tests.conftest import Upstream, facade_config

HELLO = [{"role": "user", "content": "hola capibara, qué tal"}]
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]


def _stream_bytes(base_url: str, body: dict[str, object]) -> tuple[httpx.Headers, bytes]:
    with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=20) as response:
        assert response.status_code == 200
        return response.headers, b"".join(response.iter_raw())


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="text"),
        pytest.param({"stream_options": {"include_usage": True}}, id="usage-chunk"),
        pytest.param({"tools": TOOLS, "tool_choice": "required"}, id="parallel-tool-calls"),
        pytest.param(
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, id="tool"
        ),
    ],
)
def test_the_stream_is_byte_for_byte_the_upstreams(
    facade_url: str, upstream: Upstream, extra: dict[str, object]
) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, **extra}
    _, direct = _stream_bytes(upstream.url, body)
    _, relayed = _stream_bytes(facade_url, body)
    assert relayed == direct
    assert b": ping\n\n" in relayed and relayed.endswith(b"data: [DONE]\n\n")


def test_stream_headers_suit_sse_behind_proxies(facade_url: str) -> None:
    headers, _ = _stream_bytes(facade_url, {"model": "qwen_coder", "messages": HELLO, "stream": True})
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"


def test_events_reach_the_client_while_the_upstream_is_still_generating(facade_url: str, upstream: Upstream) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, "demo": {"chunk_delay": 0.3}}
    with httpx.stream("POST", facade_url + "/v1/chat/completions", json=body, timeout=20) as response:
        request_id = response.headers["x-request-id"]
        events = response.iter_lines()
        first = next(line for line in events if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
        # The first event is in our hands, yet the upstream has not finished writing the stream.
        assert upstream.request(request_id)["outcome"] == "in_progress"
        rest = [line for line in events if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    assert upstream.wait_for_outcome(request_id, "completed")


def _abandon(facade_url: str, body: dict[str, object], read_events: int) -> str:
    """Send a request on a raw socket, read `read_events` SSE events (0: none), then hang up."""
    payload = json.dumps(body).encode()
    request_id = str(uuid.uuid4())
    port = int(facade_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: facade\r\nContent-Type: application/json\r\n"
            + f"X-Request-ID: {request_id}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while received.count(b"data:") < read_events:
            chunk = sock.recv(65536)
            assert chunk, "facade closed the stream early"
            received += chunk
        if not read_events:
            time.sleep(0.3)  # the request is in flight upstream, nothing has come back yet
    return request_id


def test_a_client_leaving_mid_stream_closes_the_upstream_request(facade_url: str, upstream: Upstream) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, "demo": {"chunk_delay": 0.5}}
    request_id = _abandon(facade_url, body, read_events=2)
    assert upstream.wait_for_outcome(request_id, "client_disconnected")


def test_a_client_leaving_before_the_first_byte_closes_the_upstream_request(
    facade_url: str, upstream: Upstream
) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, "demo": {"delay": 1.2}}
    request_id = _abandon(facade_url, body, read_events=0)
    assert upstream.wait_for_outcome(request_id, "client_disconnected")


def test_a_client_leaving_a_pending_non_streaming_request_closes_it_upstream(
    facade_url: str, upstream: Upstream
) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "demo": {"delay": 1.2}}
    request_id = _abandon(facade_url, body, read_events=0)
    assert upstream.wait_for_outcome(request_id, "client_disconnected")


def test_an_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(facade_url: str) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, "demo": {"drop_after": 3}}
    _, relayed = _stream_bytes(facade_url, body)
    events = [event for event in relayed.split(b"\n\n") if event]
    assert events[-1].startswith(b"data: {")
    error = json.loads(events[-1][5:])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error"
    assert b"[DONE]" not in relayed


def test_aliases_in_alias_mode_rename_model_in_every_chunk_and_keep_the_rest(
    facade_url: str, upstream: Upstream
) -> None:
    body = {"model": "aya_expanse_multilingual", "messages": HELLO, "stream": True}
    _, direct = _stream_bytes(upstream.url, body)
    _, renamed = _stream_bytes(facade_url, {**body, "model": "capibara6-renamed"})
    assert renamed.replace(b'"model":"capibara6-renamed"', b'"model":"aya_expanse_multilingual"') == direct


def test_a_stream_keeps_flowing_across_long_gaps_within_the_stream_read_timeout(tmp_path: Path) -> None:
    """A streaming read timeout is the longest silence between chunks, not a deadline for the whole stream."""
    with (
        support.running(support.demo_upstream(tmp_path, "--chunk-delay", "0.4")) as slow,
        support.running(support.facade(tmp_path, facade_config(slow.url))) as facade,
    ):
        # 9 chunks 0.4 s apart: longer in total than the 1.5 s stream read timeout, never silent that long.
        _, relayed = _stream_bytes(facade.url, {"model": "qwen_coder", "messages": HELLO, "stream": True})
    assert relayed.endswith(b"data: [DONE]\n\n")


def _stream_across_a_sigterm(upstream_url: str, tmp_path: Path, grace_seconds: int) -> bytes:
    """The stream the facade sends while it gets SIGTERM, right after the first event."""
    grace = {"CAPIBARA__SERVER__SHUTDOWN_GRACE_SECONDS": str(grace_seconds)}
    facade = support.facade(tmp_path, facade_config(upstream_url), env=grace)
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True}
    with (
        support.running(facade),
        httpx.stream("POST", facade.url + "/v1/chat/completions", json=body, timeout=20) as response,
    ):
        chunks = response.iter_raw()
        relayed = b""
        while b"data:" not in relayed:
            relayed += next(chunks)
        facade.signal(signal.SIGTERM)
        return relayed + b"".join(chunks)


@pytest.mark.parametrize("grace_seconds", [0, 1])
def test_a_stream_outliving_the_shutdown_grace_period_ends_with_an_error_event(
    tmp_path: Path, grace_seconds: int
) -> None:
    # 9 chunks 0.5 s apart: longer than either grace period, so a grace period of 0 is no time, not forever.
    with support.running(support.demo_upstream(tmp_path, "--chunk-delay", "0.5")) as slow:
        relayed = _stream_across_a_sigterm(slow.url, tmp_path, grace_seconds)
    events = [event for event in relayed.split(b"\n\n") if event]
    assert json.loads(events[-1][5:])["error"]["code"] == "server_shutdown"
    assert b"data: [DONE]" not in relayed


def test_a_stream_shorter_than_the_shutdown_grace_period_ends_cleanly_after_sigterm(tmp_path: Path) -> None:
    # 9 chunks 0.15 s apart: well within the 30 s grace period, so the stream must not notice the SIGTERM.
    with support.running(support.demo_upstream(tmp_path, "--chunk-delay", "0.15")) as slow:
        relayed = _stream_across_a_sigterm(slow.url, tmp_path, grace_seconds=30)
        _, direct = _stream_bytes(slow.url, {"model": "qwen_coder", "messages": HELLO, "stream": True})
    assert relayed == direct
    assert relayed.endswith(b"data: [DONE]\n\n")


def test_a_whole_answer_still_pending_when_the_grace_period_ends_gets_a_503_envelope(tmp_path: Path) -> None:
    with support.running(support.demo_upstream(tmp_path, "--delay", "5")) as slow:
        config = support.upstream_config(slow.url, read_timeout_seconds=20) + "[server]\nshutdown_grace_seconds = 1\n"
        with support.running(support.facade(tmp_path, config)) as facade:
            payload = json.dumps({"model": "qwen_coder", "messages": HELLO}).encode()
            with socket.create_connection(("127.0.0.1", facade.port), timeout=20) as sock:
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                support.wait_for(lambda: httpx.get(slow.url + "/_demo/requests").json() or None)
                facade.signal(signal.SIGTERM)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "server_shutdown"
    assert "Traceback" not in facade.log()
