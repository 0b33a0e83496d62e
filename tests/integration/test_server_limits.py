"""The [server] limits on a real socket: what a hostile or broken client meets when nothing is in front.

Each test talks raw HTTP/1.1 to a facade process whose limits are small (a 0.5 s header timeout, a 4 KiB
head), and every wait, loop and payload is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import support
from tests.conftest import Upstream

LIMITS = """
[server]
max_url_bytes = 1024
max_header_bytes = 4096
header_timeout_seconds = 0.5
body_timeout_seconds = 0.5
body_min_bytes_per_second = 2000
keepalive_timeout_seconds = 2
log_level = "debug"
"""
CHAT = b'{"model": "capibara6", "messages": [{"role": "user", "content": "hola"}]}'
CAP_WARNING = "server.max_connections reached"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[support.ServerProcess]:
    config = LIMITS + support.upstream_config(upstream.url)
    with support.running(support.facade(tmp_path_factory.mktemp("limits"), config)) as server:
        yield server


def _connect(server: support.ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes the connection (a reset after its answer counts as closing)."""
    received = b""
    try:
        while len(received) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open; it sent {received!r}") from None
    return received


def _trickle_until_answered(sock: socket.socket, piece: bytes, every: float = 0.05, within: float = 5.0) -> None:
    """Send `piece` every `every` seconds until the server has something to say (bounded by `within`)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if select.select([sock], [], [], every)[0]:
            return
        sock.sendall(piece)
    raise AssertionError(f"the server was still reading after {within} s of trickling")


def _assert_refusal(answer: bytes, status: int, code: str) -> str:
    """`answer` is `status` in OpenAI's envelope with `Connection: close`; returns the error message."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith(f"HTTP/1.1 {status} "), answer[:200]
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


def test_a_url_over_max_url_bytes_is_answered_414_and_the_connection_closed(limited: support.ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /v1/models?q=" + b"a" * 1100 + b" HTTP/1.1\r\nHost: f\r\n\r\n")
        message = _assert_refusal(_read_until_closed(sock), 414, "url_too_long")
    assert "1024 bytes" in message


def test_a_url_just_under_max_url_bytes_is_served(limited: support.ServerProcess) -> None:
    url = "/health?q=" + "a" * (1024 - len("/health?q="))
    assert httpx.get(limited.url + url, timeout=5).status_code == 200


def test_a_head_over_max_header_bytes_is_answered_431(limited: support.ServerProcess) -> None:
    with _connect(limited) as sock:
        cookies = b"".join(b"Cookie: c%d=%s\r\n" % (index, b"x" * 500) for index in range(9))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: f\r\n" + cookies + b"\r\n")
        message = _assert_refusal(_read_until_closed(sock), 431, "headers_too_large")
    assert "4096 bytes" in message


def test_a_huge_header_is_cut_off_at_the_limit_with_431_while_other_clients_are_served(
    limited: support.ServerProcess,
) -> None:
    sent = 0
    answer = b""

    def send_an_endless_header() -> None:  # 32 MiB at most, never finished with a blank line
        nonlocal sent, answer
        with _connect(limited) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: f\r\nX-Huge: ")
            piece = b"a" * 65536
            try:
                while sent < 32 << 20:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:  # the server closed without reading the rest
                pass
            answer = _read_until_closed(sock)

    hostile = threading.Thread(target=send_an_endless_header)
    hostile.start()
    try:
        with httpx.Client(base_url=limited.url, timeout=5) as other:
            for _ in range(5):
                assert other.get("/health").status_code == 200
    finally:
        hostile.join(30)
    assert not hostile.is_alive()
    _assert_refusal(answer, 431, "headers_too_large")
    assert sent < 32 << 20  # what the kernel's buffers took before the server closed, not the whole header


def test_a_head_sent_byte_by_byte_is_answered_408_once_header_timeout_has_passed_since_its_first_byte(
    limited: support.ServerProcess,
) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: f\r\n")
        _trickle_until_answered(sock, b"X", every=0.05)  # each byte well within the timeout; the head never ends
        message = _assert_refusal(_read_until_closed(sock), 408, "request_timeout")
    assert "headers" in message


def test_a_connection_that_never_sends_is_closed_after_the_keepalive_timeout(limited: support.ServerProcess) -> None:
    with _connect(limited) as sock:
        assert _read_until_closed(sock) == b""  # closed without an answer: there was no request to answer


def test_a_connection_answered_before_its_body_was_sent_is_closed_once_idle_for_the_keepalive_timeout(
    limited: support.ServerProcess,
) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"POST /v1/nowhere HTTP/1.1\r\nHost: f\r\nContent-Length: 10\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):  # the 404 envelope, sent without waiting for the body
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 404 ")
        sock.sendall(b"0123456789")  # the body, after the answer: then silence
        assert _read_until_closed(sock) == b""


def test_a_body_that_stalls_half_way_is_answered_408_and_its_request_ends(limited: support.ServerProcess) -> None:
    body = CHAT + b" " * 1000
    with _connect(limited) as sock:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: f\r\nX-Request-ID: stalled-body\r\n"
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        message = _assert_refusal(_read_until_closed(sock), 408, "request_timeout")
    assert "stopped arriving" in message
    # The route waiting for the rest of the body is told the client is gone (its debug line), so nothing is held.
    deadline = time.monotonic() + 5
    while "(request stalled-body)" not in limited.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "client left before the answer was complete (request stalled-body)" in limited.log()


def test_a_body_trickling_below_the_minimum_rate_is_answered_408(limited: support.ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: f\r\nContent-Length: 100000\r\n\r\n")
        _trickle_until_answered(sock, b" " * 20, every=0.1)  # 200 bytes/s, never silent for the body timeout
        message = _assert_refusal(_read_until_closed(sock), 408, "request_timeout")
    assert "2000 bytes per second" in message


def test_a_keep_alive_client_pausing_between_requests_and_within_a_body_is_served_on_one_connection(
    limited: support.ServerProcess,
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=5)
    try:
        connection.request("GET", "/health")
        (health := connection.getresponse()).read()
        opened = connection.sock
        time.sleep(1.0)  # idle longer than the header timeout, shorter than the keep-alive timeout
        connection.request("GET", "/v1/models")
        (models := connection.getresponse()).read()
        time.sleep(1.0)
        connection.putrequest("POST", "/v1/chat/completions")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(CHAT)))
        connection.endheaders()
        connection.send(CHAT[:20])
        time.sleep(0.2)  # a pause within the body, shorter than the body timeout
        connection.send(CHAT[20:])
        chat = connection.getresponse()
        reply = json.loads(chat.read())
        assert connection.sock is opened  # one connection throughout: never closed under the client
    finally:
        connection.close()
    assert (health.status, models.status, chat.status) == (200, 200, 200)
    assert reply["choices"][0]["message"]["content"] == "Hola! You said: hola"


def test_at_max_connections_new_connections_get_503_while_open_ones_are_served_and_it_is_logged_once(
    tmp_path: Path, upstream: Upstream
) -> None:
    config = "[server]\nmax_connections = 4\nkeepalive_timeout_seconds = 30\n" + support.upstream_config(upstream.url)
    with support.running(support.facade(tmp_path, config)) as server:
        served = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=5) for _ in range(4)]
        try:
            for connection in served:
                assert _get_health(connection) == 200
            for _ in range(3):
                with _connect(server) as sock:
                    with contextlib.suppress(ConnectionError):  # the answer may come, and the close, before this
                        sock.sendall(b"GET /health HTTP/1.1\r\nHost: f\r\n\r\n")
                    _assert_refusal(_read_until_closed(sock), 503, "too_many_connections")
            assert _get_health(served[0]) == 200
            served.pop().close()
            deadline = time.monotonic() + 5  # the server notices the close a moment later
            while not _served_on_a_new_connection(server):
                assert time.monotonic() < deadline, "new connections were still refused after one closed"
                time.sleep(0.05)
        finally:
            for connection in served:
                connection.close()
        assert server.log().count(CAP_WARNING) == 1, server.log()


def _get_health(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/health")
    response = connection.getresponse()
    response.read()
    return response.status


def _served_on_a_new_connection(server: support.ServerProcess) -> bool:
    try:
        return httpx.get(server.url + "/health", timeout=5).status_code == 200
    except httpx.TransportError:  # refused: the 503 and the close can beat the request
        return False


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[support.ServerProcess]:
    """Two worker processes, started with 128 open files allowed and 256 at most; max_connections is 2048."""
    config = "[server]\nmax_url_bytes = 1024\n" + support.upstream_config(upstream.url)
    server = support.facade(tmp_path_factory.mktemp("workers"), config, "--workers", "2")
    lower = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (128, 256)); "
    server.argv = [support.PYTHON, "-c", lower + "os.execv(sys.argv[1], sys.argv[1:])", *server.argv]
    with support.running(server):
        yield server


def test_with_several_workers_every_worker_enforces_the_limits(two_workers: support.ServerProcess) -> None:
    for _ in range(6):  # the kernel spreads connections over the workers
        with _connect(two_workers) as sock:
            sock.sendall(b"GET /health?q=" + b"a" * 1100 + b" HTTP/1.1\r\nHost: f\r\n\r\n")
            _assert_refusal(_read_until_closed(sock), 414, "url_too_long")
    assert httpx.get(two_workers.url + "/health", timeout=5).status_code == 200


def test_the_open_files_limit_is_raised_to_the_hard_limit_and_a_cap_that_cannot_fit_is_warned_about(
    two_workers: support.ServerProcess,
) -> None:
    assert two_workers.process is not None
    parent = two_workers.process.pid
    workers = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(workers) >= 2
    for pid in [parent, *map(int, workers)]:
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max open files\s+256\s+256\s", limits), limits
    assert "the open files limit (256) is below the 4160 that server.max_connections = 2048" in two_workers.log()
