"""What an operator sees: one JSON log line per request that agrees with /metrics, Server-Timing for the
browser, a start-up report a person can read, and tokens counted from what the upstream reported."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import support
from tests.conftest import Upstream, facade_config
from tests.raw_upstream import RawUpstream, chat_only, http_response

HELLO = [{"role": "user", "content": "hola capibara"}]


@pytest.fixture
def observed(tmp_path: Path, upstream: Upstream) -> Iterator[support.ServerProcess]:
    """A facade of its own, so that its metrics and log hold only what the test sent."""
    with support.running(support.facade(tmp_path, facade_config(upstream.url))) as server:
        yield server


def _log_lines(server: support.ServerProcess) -> list[dict[str, Any]]:
    lines = [line for line in server.log_path.read_text().splitlines() if line.startswith('{"ts":')]
    return [json.loads(line) for line in lines]


def _samples(server: support.ServerProcess, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples named `name` on /metrics, keyed by their labels."""
    text = httpx.get(server.url + "/metrics").text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def _chat(server: support.ServerProcess, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json={"messages": HELLO, **body}, timeout=20)


def test_every_request_gets_one_log_line_that_agrees_with_the_metrics(observed: support.ServerProcess) -> None:
    assert _chat(observed, model="capibara6").status_code == 200
    assert _chat(observed, model="qwen_coder", stream=True).status_code == 200
    assert _chat(observed, model="nope").status_code == 404
    assert httpx.get(observed.url + "/v1/models").status_code == 200
    lines = _log_lines(observed)
    assert [(line["route"], line["status"], line["outcome"]) for line in lines] == [
        ("chat", 200, "completed"),
        ("chat", 200, "completed"),
        ("chat", 404, "rejected"),
        ("models", 200, "completed"),
    ]
    requests = _samples(observed, "capibara_requests_total")
    assert sum(requests.values()) == len(lines)
    key = (
        ("caller", "public"),
        ("model", "capibara6"),
        ("route", "chat"),
        ("status", "200"),
        ("stream", "false"),
        ("upstream", "default"),
    )
    assert requests[key] == 1
    tokens = _samples(observed, "capibara_tokens_total")
    completion = sum(line["completion_tokens"] or 0 for line in lines)
    assert completion > 0
    assert sum(value for labels, value in tokens.items() if ("kind", "completion") in labels) == completion


def test_a_log_line_names_what_happened_and_never_what_was_said(observed: support.ServerProcess) -> None:
    response = httpx.post(
        observed.url + "/v1/chat/completions",
        json={"model": "capibara6", "messages": [{"role": "user", "content": "mi secreto es 42"}]},
        headers={"Authorization": "Bearer sk-client-secret"},
        timeout=20,
    )
    line = _log_lines(observed)[-1]
    assert line["request_id"] == response.headers["x-request-id"]
    assert (line["model"], line["upstream"], line["upstream_model"]) == (
        "capibara6",
        "default",
        "aya_expanse_multilingual",
    )
    assert line["prompt_tokens"] == 4 and line["completion_tokens"] == 7 and line["usage_source"] == "upstream"
    assert line["bytes_out"] == len(response.content)
    assert line["duration_ms"] >= line["overhead_ms"] >= 0
    log = observed.log_path.read_text()
    assert "secreto" not in log and "sk-client-secret" not in log and "upstream-secret" not in log


def test_a_whole_answer_says_in_server_timing_where_the_time_went(observed: support.ServerProcess) -> None:
    timing = _chat(observed, model="capibara6").headers["server-timing"]
    upstream, facade = (part.strip() for part in timing.split(","))
    assert upstream.startswith("upstream;dur=") and facade.startswith("facade;dur=")
    assert float(upstream.split("=")[1]) >= 0 and float(facade.split("=")[1]) >= 0


def test_a_stream_says_in_server_timing_how_long_the_upstream_took_to_answer(observed: support.ServerProcess) -> None:
    with httpx.stream(
        "POST", observed.url + "/v1/chat/completions", json={"model": "capibara6", "messages": HELLO, "stream": True}
    ) as response:
        assert response.headers["server-timing"].startswith("upstream;dur=")


def test_a_stream_the_client_abandoned_counts_the_events_it_was_sent(observed: support.ServerProcess) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, "demo": {"chunk_delay": 0.2}}
    with socket.create_connection(("127.0.0.1", observed.port)) as sock:
        payload = json.dumps(body).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        received = b""
        while received.count(b"data:") < 3:  # the role chunk and two words
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
    line = support.wait_for(lambda: next((li for li in _log_lines(observed) if li["outcome"] == "client_gone"), None))
    assert line["disconnect_phase"] == "streaming"
    assert line["usage_source"] == "events" and line["completion_tokens"] >= 2
    assert _samples(observed, "capibara_client_disconnects_total")[(("phase", "streaming"),)] == 1


def test_an_answer_without_usage_counts_no_tokens_and_says_so(tmp_path: Path) -> None:
    completion = b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[]}'
    with RawUpstream(chat_only(lambda _: http_response(200, completion))).running() as raw:
        config = support.upstream_config(raw.url) + '[[models]]\nname = "m"\n[legacy_chat]\nmodel = "m"\n'
        with support.running(support.facade(tmp_path, config)) as facade:
            assert _chat(facade, model="m").status_code == 200
            assert _samples(facade, "capibara_usage_missing_total") == {(("model", "m"),): 1}
            assert not _samples(facade, "capibara_tokens_total")
            assert _log_lines(facade)[-1]["completion_tokens"] is None


def test_the_start_up_report_says_where_it_listens_and_what_each_upstream_answered(
    tmp_path: Path, upstream: Upstream
) -> None:
    with support.running(support.facade(tmp_path, facade_config(upstream.url))) as facade:
        report = facade.log()
    assert f"on http://127.0.0.1:{facade.port} (1 worker), config: " in report
    assert f"upstream default: {upstream.url}/health -> HTTP 200" in report
    assert "upstream down: " in report and "no answer (ConnectError)" in report
    assert "WARNING: no upstream answers" not in report


def test_the_start_up_report_warns_naming_the_url_when_no_upstream_answers(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{support.free_port()}"
    with support.running(support.facade(tmp_path, support.upstream_config(nowhere))) as facade:
        report = facade.log()
    assert f"WARNING: no upstream answers ({nowhere})" in report


def test_metrics_and_the_request_log_can_be_turned_off(tmp_path: Path, upstream: Upstream) -> None:
    config = facade_config(upstream.url, "[metrics]\nenabled = false\n[request_log]\nenabled = false\n")
    with support.running(support.facade(tmp_path, config)) as facade:
        assert _chat(facade, model="capibara6").status_code == 200
        assert httpx.get(facade.url + "/metrics").status_code == 404
        assert not _log_lines(facade)


def test_with_tracing_on_a_span_follows_the_clients_trace_to_the_upstream(tmp_path: Path, upstream: Upstream) -> None:
    spans_path = tmp_path / "spans.jsonl"
    config = facade_config(upstream.url, f'[tracing]\nenabled = true\nexporter = "file"\npath = "{spans_path}"\n')
    trace_id, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with support.running(support.facade(tmp_path, config)) as facade:
        response = httpx.post(
            facade.url + "/v1/chat/completions",
            json={"model": "capibara6", "messages": HELLO},
            headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
            timeout=20,
        )
        sent = upstream.request(response.headers["x-request-id"])["traceparent"]
        span = support.wait_for(lambda: (spans_path.exists() and spans_path.read_text().strip()) or None)
    record = json.loads(span.splitlines()[-1])
    assert record["name"] == "chat capibara6"
    assert record["context"]["trace_id"] == f"0x{trace_id}" and record["parent_id"] == f"0x{client_span}"
    assert sent == f"00-{trace_id}-{record['context']['span_id'][2:]}-01"  # the upstream's parent is our span
    attributes = record["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "capibara6"
    assert attributes["gen_ai.response.model"] == "aya_expanse_multilingual"
    assert attributes["gen_ai.usage.input_tokens"] == 2 and attributes["gen_ai.usage.output_tokens"] == 5
    assert "error.type" not in attributes
