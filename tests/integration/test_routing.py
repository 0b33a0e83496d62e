"""Several model servers behind one public name, on real processes: a replica killed under load costs no
request and ends only its own streams; a stalled one is ejected after its timeouts and taken back when it
recovers; retries stay within their budget; an overloaded upstream gets no more than `max_in_flight` and the
rest a prompt 503 with Retry-After, in flat memory; a model whose server is down is answered by its fallback;
and a session stays on one replica."""

from __future__ import annotations

import collections
import json
import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import fleet, support
from tests.raw_upstream import RawUpstream, chat_only, http_response

REPLICATED = f"""
[[models]]
name = "replicated"
upstream_model = "{fleet.MODEL}"
targets = [{{ upstream = "first" }}, {{ upstream = "second" }}]
"""


def _demo(tmp_path: Path, *switches: str) -> support.ServerProcess:
    return support.demo_upstream(tmp_path, "--chunk-delay", "0", *switches)


def _envelope(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


# --- a replica killed under load -----------------------------------------------------------------------

WHOLE_ANSWERS = 2000
CLIENTS = 16
STREAMS = 8
# Streams of ~65 events 0.1 s apart, opened half-way through the load: every one is still open at the kill.
STREAM_BODY = {
    "model": "replicated",
    "messages": [{"role": "user", "content": " ".join(f"palabra{n}" for n in range(60))}],
    "stream": True,
    "demo": {"chunk_delay": 0.1},
}


class Progress:
    """Whole answers received so far, from every client thread; `half_way` is set at half of them."""

    def __init__(self, total: int) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._half = total // 2
        self.half_way = threading.Event()

    def tick(self) -> None:
        with self._lock:
            self._done += 1
            if self._done >= self._half:
                self.half_way.set()


def _whole_answers(url: str, numbers: range, progress: Progress) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    with httpx.Client(base_url=url, timeout=20) as http:
        for number in numbers:
            statuses[fleet.chat(http, "replicated", f"whole-{number}").status_code] += 1
            progress.tick()
    return statuses


def _stream(url: str, request_id: str, opened: threading.Barrier) -> list[str]:
    """Every `data:` line of one stream, read to its end; waits at `opened` once the first one arrived."""
    lines: list[str] = []
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=STREAM_BODY, headers={"X-Request-ID": request_id}, timeout=20
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                lines.append(line)
                if len(lines) == 1:
                    opened.wait(30)
    return lines


def test_killing_one_of_two_replicas_under_load_fails_no_request_and_ends_only_its_streams(tmp_path: Path) -> None:
    with support.running(_demo(tmp_path)) as first, support.running(_demo(tmp_path)) as second:
        config = fleet.fleet_config({"first": first.url, "second": second.url}, REPLICATED, "replicated")
        with (
            support.running(support.facade(tmp_path, config)) as facade,
            ThreadPoolExecutor(CLIENTS + STREAMS) as pool,
        ):
            progress = Progress(WHOLE_ANSWERS)
            share = WHOLE_ANSWERS // CLIENTS
            clients = [
                pool.submit(_whole_answers, facade.url, range(n * share, (n + 1) * share), progress)
                for n in range(CLIENTS)
            ]
            assert progress.half_way.wait(120)
            opened = threading.Barrier(STREAMS + 1)
            streams = {f"stream-{n}": pool.submit(_stream, facade.url, f"stream-{n}", opened) for n in range(STREAMS)}
            opened.wait(30)  # every stream has had its first event
            first.signal(signal.SIGKILL)
            assert not any(stream.done() for stream in streams.values()), "every stream was open at the kill"
            statuses = sum((client.result(timeout=120) for client in clients), collections.Counter[int]())
            events = {request_id: stream.result(timeout=30) for request_id, stream in streams.items()}
        log = fleet.request_log(facade)

    assert statuses == {200: WHOLE_ANSWERS}  # the connect errors after the kill were tried again on `second`
    served = collections.Counter(log[f"whole-{n}"]["upstream"] for n in range(WHOLE_ANSWERS))
    assert served["first"] > 0 and served["second"] > 0
    cut = [events[request_id] for request_id in events if log[request_id]["upstream"] == "first"]
    kept = [events[request_id] for request_id in events if log[request_id]["upstream"] == "second"]
    assert cut and kept  # the streams were spread over both replicas
    for lines in cut:
        assert json.loads(lines[-1][5:])["error"]["type"], lines[-1]
        assert "data: [DONE]" not in lines
    for lines in kept:
        assert lines[-1] == "data: [DONE]"
        assert not any('"error"' in line for line in lines)


# --- a stalled replica -------------------------------------------------------------------------------

STALLED = f"""
[[models]]
name = "replicated"
upstream_model = "{fleet.MODEL}"
targets = [{{ upstream = "stalled" }}, {{ upstream = "healthy" }}]
"""


def _upstream_state(server: support.ServerProcess, upstream: str) -> dict[str, float]:
    """`capibara_upstream_state{upstream=...}` on /metrics, by state."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "capibara_upstream_state" and sample.labels["upstream"] == upstream
    }


def test_a_stalled_replica_is_ejected_after_its_timeouts_and_taken_back_when_it_recovers(tmp_path: Path) -> None:
    with fleet.StalledUpstream().running() as stalled, support.running(_demo(tmp_path)) as healthy:
        config = fleet.fleet_config(
            {"stalled": stalled.url, "healthy": healthy.url},
            STALLED,
            "replicated",
            read_timeout_seconds=0.5,
            eject_after_failures=2,
            eject_cooldown_seconds=1,
            eject_max_cooldown_seconds=1,
        )
        with support.running(support.facade(tmp_path, config)) as facade, httpx.Client(base_url=facade.url) as http:
            # Until it is ejected, a request that meets the stalled replica waits out the read timeout: a 504.
            # (A whole answer that timed out is not sent again: the upstream may still be generating it.)
            before: list[httpx.Response] = []
            for number in range(40):
                before.append(fleet.chat(http, "replicated", f"before-{number}"))
                if fleet.upstream_health(facade, "stalled")["breaker"] == "open":
                    break
            assert fleet.upstream_health(facade, "stalled")["breaker"] == "open"
            assert _upstream_state(facade, "stalled") == {"closed": 0, "open": 1, "half_open": 0}
            timed_out = [response for response in before if response.status_code == 504]
            assert len(timed_out) == 2
            support.wait_for(lambda: True if stalled.chat_requests() == 2 else None)  # it read both, answered none
            assert {_envelope(response)["code"] for response in timed_out} == {"upstream_timeout"}
            assert all(r.json()["id"].startswith("chatcmpl-demo") for r in before if r.status_code != 504)

            # While it is ejected, every request goes to the healthy one (each sent just after /health said so).
            moved: list[httpx.Response] = []
            while len(moved) < 10 and fleet.upstream_health(facade, "stalled")["breaker"] == "open":
                moved.append(fleet.chat(http, "replicated", f"moved-{len(moved)}"))
            assert moved
            assert {response.status_code for response in moved} == {200}
            assert all(response.json()["id"].startswith("chatcmpl-demo") for response in moved)
            assert stalled.chat_requests() == 2

            # Recovered: after the cooldown one request is let through, and its success closes the breaker.
            stalled.recover()
            fleet.breaker_becomes(facade, "stalled", "half_open")
            after: list[httpx.Response] = []
            for number in range(40):
                after.append(fleet.chat(http, "replicated", f"after-{number}"))
                if fleet.upstream_health(facade, "stalled")["breaker"] == "closed":
                    break
            assert fleet.upstream_health(facade, "stalled")["breaker"] == "closed"
            assert {response.status_code for response in after} == {200}
            assert after[-1].json()["id"] == "from-the-recovered-upstream"
            assert _upstream_state(facade, "stalled") == {"closed": 1, "open": 0, "half_open": 0}


# --- a fleet answering 503 -----------------------------------------------------------------------------

BUDGET_PERCENT = 20
BUDGET_MINIMUM = 3
FAILING = """
[[models]]
name = "failing"
targets = [{ upstream = "a" }, { upstream = "b" }]
fallbacks = ["spare"]

[[models]]
name = "spare"
upstream = "c"
"""


def test_an_upstream_answering_503_to_everything_gets_no_more_retries_than_the_budget(tmp_path: Path) -> None:
    busy = b'{"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}}'
    # Three upstreams on the same server, so each request may be tried three times (two targets, a fallback)
    # and every attempt is counted in one place. The breaker is kept out of the way: this is about the budget.
    with RawUpstream(chat_only(lambda request: http_response(503, busy, "Retry-After: 1"))).running() as server:
        config = fleet.fleet_config(
            {"a": server.url, "b": server.url, "c": server.url},
            FAILING,
            "failing",
            routing=(
                f"max_attempts = 3\nretry_budget_percent = {BUDGET_PERCENT}\nretry_budget_minimum = {BUDGET_MINIMUM}\n"
                "retry_budget_window_seconds = 600\n"  # one window for the whole test
            ),
            eject_after_failures=100_000,
        )
        with (
            support.running(support.facade(tmp_path, config)) as facade,
            httpx.Client(base_url=facade.url, timeout=20) as http,
            ThreadPoolExecutor(4) as pool,
        ):
            answers = list(pool.map(lambda number: fleet.chat(http, "failing", f"failing-{number}"), range(60)))
        hits = len(server.chat_requests())

    assert {answer.status_code for answer in answers} == {503}
    assert {answer.headers["retry-after"] for answer in answers} == {"1"}
    assert {_envelope(answer)["type"] for answer in answers} == {"upstream_error"}
    first_attempts = len(answers)
    assert first_attempts < hits <= first_attempts * (1 + BUDGET_PERCENT / 100) + BUDGET_MINIMUM  # not 3 x 60


# --- overload ------------------------------------------------------------------------------------------

QUEUE_TIMEOUT = 1.0
ANSWER_DELAY = 0.3
OVERLOAD_CLIENTS = 64


def _wave(url: str, pool: ThreadPoolExecutor, wave: int) -> list[httpx.Response]:
    """Each of 64 clients sends two requests, one after the other; their answers."""
    # Bounded: a request that waited in the queue longer than it may would time out here, and fail the test.
    timeout = httpx.Timeout(QUEUE_TIMEOUT + ANSWER_DELAY + 10)
    connections = httpx.Limits(max_connections=OVERLOAD_CLIENTS)
    with httpx.Client(base_url=url, timeout=timeout, limits=connections) as http:  # shared: thread-safe

        def client(number: int) -> list[httpx.Response]:
            return [fleet.chat(http, "only", f"wave-{wave}-{number}-{n}") for n in range(2)]

        return [answer for answers in pool.map(client, range(OVERLOAD_CLIENTS)) for answer in answers]


def _in_flight_while(server: support.ServerProcess, running: threading.Event) -> int:
    """The most requests in flight to the upstream that /health reported while `running` was set."""
    most = 0
    for _ in range(1000):  # bounded; a wave lasts a few seconds
        if not running.is_set():
            break
        most = max(most, fleet.upstream_health(server, "only")["in_flight"])
    return most


def test_an_overloaded_upstream_gets_max_in_flight_and_the_rest_a_prompt_503_in_flat_memory(tmp_path: Path) -> None:
    models = f'[[models]]\nname = "only"\nupstream_model = "{fleet.MODEL}"\nupstream = "only"\n'
    with support.running(_demo(tmp_path, "--delay", str(ANSWER_DELAY))) as upstream:
        config = fleet.fleet_config(
            {"only": upstream.url}, models, "only", routing=f"queue_timeout_seconds = {QUEUE_TIMEOUT}", max_in_flight=4
        )
        with (
            support.running(support.facade(tmp_path, config)) as facade,
            ThreadPoolExecutor(OVERLOAD_CLIENTS + 1) as pool,
        ):
            running = threading.Event()
            running.set()
            watching = pool.submit(_in_flight_while, facade, running)
            first = _wave(facade.url, pool, 1)
            running.clear()
            most_in_flight = watching.result(timeout=60)
            after_first = fleet.rss_kib(facade)
            second = _wave(facade.url, pool, 2)
            after_second = fleet.rss_kib(facade)

    assert most_in_flight == 4  # kept busy at its limit, never beyond
    answers = first + second
    statuses = collections.Counter(answer.status_code for answer in answers)
    assert set(statuses) == {200, 503}, statuses
    for refused in (answer for answer in answers if answer.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert _envelope(refused)["code"] == "no_upstream_available"
    assert abs(after_second - after_first) < 4 * 1024, (after_first, after_second)  # KiB: flat, not growing


# --- fallbacks and affinity ----------------------------------------------------------------------------

ROUTED = f"""
[[models]]
name = "primary"
upstream = "down"
upstream_model = "{fleet.MODEL}"
fallbacks = ["secondary"]

[[models]]
name = "secondary"
upstream = "backup"
upstream_model = "phi4_fast"

[[models]]
name = "sticky"
upstream_model = "qwen_coder"
affinity = "session"
targets = [{{ upstream = "left" }}, {{ upstream = "right" }}]
"""


class Routed:
    def __init__(
        self, facade: support.ServerProcess, left: support.ServerProcess, right: support.ServerProcess
    ) -> None:
        self.facade, self.left, self.right = facade, left, right


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    tmp_path = tmp_path_factory.mktemp("routed")
    with support.running(_demo(tmp_path)) as left, support.running(_demo(tmp_path)) as right:
        nothing_listening = f"http://127.0.0.1:{support.free_port()}"
        upstreams = {"down": nothing_listening, "backup": left.url, "left": left.url, "right": right.url}
        config = fleet.fleet_config(upstreams, ROUTED, "primary", connect_timeout_seconds=1)
        with support.running(support.facade(tmp_path, config)) as facade:
            yield Routed(facade, left, right)


def test_a_model_whose_only_server_is_down_is_answered_by_its_fallback_which_the_answer_names(routed: Routed) -> None:
    with httpx.Client(base_url=routed.facade.url, timeout=20) as http:
        answer = fleet.chat(http, "primary", "fallen-back")
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "phi4_fast"  # secondary's model on its upstream
    assert answer.headers["x-capibara-served-model"] == "secondary"
    line = fleet.request_log(routed.facade)["fallen-back"]
    assert (line["model"], line["upstream"], line["upstream_model"], line["status"]) == (
        "primary", "backup", "phi4_fast", 200
    )  # fmt: skip


def test_a_stream_for_a_model_whose_server_is_down_is_streamed_by_its_fallback(routed: Routed) -> None:
    body = {"model": "primary", "messages": fleet.HELLO, "stream": True}
    with httpx.stream("POST", routed.facade.url + "/v1/chat/completions", json=body, timeout=20) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert response.status_code == 200
    assert response.headers["x-capibara-served-model"] == "secondary"
    assert json.loads(lines[0][5:])["model"] == "phi4_fast"
    assert lines[-1] == "data: [DONE]"


def test_a_model_answered_by_its_own_server_says_nothing_of_fallbacks(routed: Routed) -> None:
    with httpx.Client(base_url=routed.facade.url, timeout=20) as http:
        answer = fleet.chat(http, "secondary", "served-itself")
    assert answer.status_code == 200
    assert "x-capibara-served-model" not in answer.headers


def test_the_same_session_goes_to_the_same_replica_every_time(routed: Routed) -> None:
    sessions = {f"session-{number}": [uuid.uuid4().hex for _ in range(5)] for number in range(12)}
    with httpx.Client(base_url=routed.facade.url, timeout=20) as http:
        for session, request_ids in sessions.items():
            for request_id in request_ids:
                body = {"model": "sticky", "messages": fleet.HELLO}
                headers = {"X-Session-ID": session, "X-Request-ID": request_id}
                assert http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    received = {
        side: {record["request_id"] for record in httpx.get(server.url + "/_demo/requests").json()}
        for side, server in (("left", routed.left), ("right", routed.right))
    }
    log = fleet.request_log(routed.facade)
    homes = {}
    for session, request_ids in sessions.items():
        (home,) = {side for side, seen in received.items() if seen & set(request_ids)}  # one replica per session
        assert set(request_ids) <= received[home]
        assert {log[request_id]["upstream"] for request_id in request_ids} == {home}
        homes[session] = home
    assert set(homes.values()) == {"left", "right"}  # yet sessions are spread over both
