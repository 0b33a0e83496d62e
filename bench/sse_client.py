"""A light SSE load client: raw asyncio Protocol + httptools response parser, on uvloop.

Run as its own process (the runner pins it to the load core) so its CPU never mixes with the runner's:

    python -m bench.sse_client '<json spec>'

and it prints one JSON line with the results. Three modes:

``sequential``  `concurrency` keep-alive connections, each running streams back to back until `streams` streams
                have been started in all or `duration_s` has passed. Per stream it records the time to the first
                response byte (`ttfb`), to the first SSE data event (`first_event`, what a user sees as the first
                token) and to the end of the response after `data: [DONE]` (`total`).
``slow``        `streams` connections opened over `ramp_s` seconds, each carrying one stream; every event's
                delay is its arrival time minus the stub's `time.monotonic_ns()` written inside the event
                (CLOCK_MONOTONIC is shared by every process on the machine), so the delay a proxy adds per event
                is measured exactly, independent of when the stream started.
``burst``       `concurrency` new connections opened at once, each sending `requests` requests (streaming or not,
                as the body says) one after another. The first request's time (`first`: written on a connection
                the kernel has completed, so it includes any wait in the server's listen queue) is kept apart
                from the later ones' (`rest`): a server slow to accept a burst shows in the first only.

Loopback only; every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from array import array
from typing import Any

import httptools

from bench.stub_upstream import run

_CONTENT = b'"content":"'


def percentiles(values: Any, points: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles of nanosecond values, returned in microseconds."""
    data = sorted(values)
    if not data:
        return {}
    out: dict[str, float] = {}
    for point in points:
        rank = max(0, min(len(data) - 1, math.ceil(point / 100 * len(data)) - 1))
        key = f"p{point:g}".replace(".", "")
        out[key] = round(data[rank] / 1000, 1)
    out["mean"] = round(sum(data) / len(data) / 1000, 1)
    out["max"] = round(data[-1] / 1000, 1)
    out["n"] = len(data)
    return out


class StreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that reads SSE responses event by event."""

    def __init__(self, delays: array[int] | None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.delays = delays  # slow mode: per-event delay (ns) is appended here
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.reset(0)

    def reset(self, sent_ns: int) -> None:
        self.sent_ns = sent_ns
        self.first_byte_ns = 0
        self.first_event_ns = 0
        self.done_ns = 0
        self.events = 0
        self.saw_done = False
        self.status = 0
        self.keep_alive = True
        self.crlf = False
        self.buffer = b""
        self.now = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection lost mid-response: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.now = now = time.monotonic_ns()
        if not self.first_byte_ns:
            self.first_byte_ns = now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.crlf or b"\r" in body:
            self.crlf = True
            body = body.replace(b"\r\n", b"\n")
        buffer = self.buffer + body if self.buffer else body
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            self.on_event(buffer, start, end)
            start = end + 2
        self.buffer = buffer[start:]

    def on_event(self, buffer: bytes, start: int, end: int) -> None:
        if buffer.startswith(b"data: [DONE]", start):
            self.saw_done = True
            return
        if not buffer.startswith(b"data:", start):
            return  # a comment or another field: not a token
        self.events += 1
        if not self.first_event_ns:
            self.first_event_ns = self.now
        if self.delays is not None:
            at = buffer.find(_CONTENT, start, end)
            if at >= 0:
                at += len(_CONTENT)
                stop = buffer.find(b" ", at, end)
                if stop > at:
                    self.delays.append(self.now - int(buffer[at:stop]))

    def on_message_complete(self) -> None:
        self.done_ns = self.now
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def exchange(self, request: bytes, limit_s: float) -> None:
        self.reset(time.monotonic_ns())
        self.waiter = self.loop.create_future()
        assert self.transport is not None
        self.transport.write(request)
        async with asyncio.timeout(limit_s):
            await self.waiter


def build_request(spec: dict[str, Any]) -> bytes:
    body = json.dumps(spec["body"], separators=(",", ":")).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in spec.get("headers", {}).items())
    head = (
        f"POST {spec.get('path', '/v1/chat/completions')} HTTP/1.1\r\n"
        f"Host: {spec['host']}:{spec['port']}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connect(spec: dict[str, Any], delays: array[int] | None) -> StreamConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: StreamConnection(delays), spec["host"], spec["port"])
    return protocol


def _failure(conn: StreamConnection, expected_events: int | None) -> str | None:
    """Why a finished stream does not count as complete, or None when it does."""
    if conn.status != 200:
        return f"status_{conn.status}"
    if not conn.saw_done:
        return "no_done"
    if expected_events is not None and conn.events != expected_events:
        return "wrong_event_count"
    return None


async def run_sequential(spec: dict[str, Any]) -> dict[str, Any]:
    request = build_request(spec)
    total_streams = int(spec["streams"])
    deadline = time.monotonic() + float(spec.get("duration_s", 60))
    timeout = float(spec.get("timeout_s", 30))
    expected_events = int(spec["body"].get("bench_chunks", 0)) or None
    started = 0
    ttfb: array[int] = array("q")
    first_event: array[int] = array("q")
    total: array[int] = array("q")
    errors: dict[str, int] = {}
    completed = 0

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def worker() -> None:
        nonlocal started, completed
        conn: StreamConnection | None = None
        while started < total_streams and time.monotonic() < deadline:
            started += 1
            try:
                if conn is None or conn.closed:
                    conn = await _connect(spec, None)
                await conn.exchange(request, timeout)
            except (OSError, ConnectionError, httptools.HttpParserError, TimeoutError) as exc:
                error(type(exc).__name__)
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                continue
            failure = _failure(conn, expected_events)
            if failure:
                error(failure)
            else:
                completed += 1
                ttfb.append(conn.first_byte_ns - conn.sent_ns)
                first_event.append(conn.first_event_ns - conn.sent_ns)
                total.append(conn.done_ns - conn.sent_ns)
            if not conn.keep_alive and conn.transport is not None:
                conn.transport.close()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    begin = time.monotonic()
    cpu0 = os.times()
    await asyncio.gather(*(worker() for _ in range(int(spec["concurrency"]))))
    elapsed = time.monotonic() - begin
    cpu1 = os.times()
    return {
        "mode": "sequential",
        "sent": started,
        "completed": completed,
        "errors": errors,
        "elapsed_s": round(elapsed, 4),
        "streams_per_s": round(completed / elapsed, 1) if elapsed else 0.0,
        "ttfb_us": percentiles(ttfb),
        "first_event_us": percentiles(first_event),
        "total_us": percentiles(total),
        "client_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 3),
    }


async def run_slow(spec: dict[str, Any]) -> dict[str, Any]:
    request = build_request(spec)
    count = int(spec["streams"])
    ramp = float(spec.get("ramp_s", 1.0))
    timeout = float(spec.get("timeout_s", 60))
    expected_events = int(spec["body"].get("bench_chunks", 0)) or None
    delays: array[int] = array("q")
    errors: dict[str, int] = {}
    completed = 0
    open_now = 0
    open_max = 0
    loop = asyncio.get_running_loop()
    begin = loop.time()

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one(index: int) -> None:
        nonlocal completed, open_now, open_max
        await asyncio.sleep(max(0.0, begin + ramp * index / count - loop.time()))
        conn: StreamConnection | None = None
        open_now += 1
        open_max = max(open_max, open_now)
        try:
            conn = await _connect(spec, delays)
            await conn.exchange(request, timeout)
        except (OSError, ConnectionError, httptools.HttpParserError, TimeoutError) as exc:
            error(type(exc).__name__)
            return
        finally:
            open_now -= 1
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        failure = _failure(conn, expected_events)
        if failure:
            error(failure)
        else:
            completed += 1

    cpu0 = os.times()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = loop.time() - begin
    cpu1 = os.times()
    return {
        "mode": "slow",
        "sent": count,
        "completed": completed,
        "errors": errors,
        "elapsed_s": round(elapsed, 4),
        "open_max": open_max,
        "event_delay_us": percentiles(delays),
        "client_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 3),
    }


async def run_burst(spec: dict[str, Any]) -> dict[str, Any]:
    request = build_request(spec)
    count = int(spec["concurrency"])
    per_connection = int(spec["requests"])
    timeout = float(spec.get("timeout_s", 30))
    expected_events = int(spec["body"].get("bench_chunks", 0)) or None
    streaming = bool(spec["body"].get("stream"))
    first: array[int] = array("q")
    rest: array[int] = array("q")
    errors: dict[str, int] = {}
    sent = completed = 0

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one() -> None:
        nonlocal sent, completed
        conn: StreamConnection | None = None
        try:
            conn = await _connect(spec, None)
            for index in range(per_connection):
                sent += 1
                await conn.exchange(request, timeout)
                failure = _failure(conn, expected_events) if streaming else _status_failure(conn)
                if failure:
                    error(failure)
                    return
                completed += 1
                (rest if index else first).append(conn.done_ns - conn.sent_ns)
                if not conn.keep_alive:
                    return
        except (OSError, ConnectionError, httptools.HttpParserError, TimeoutError) as exc:
            error(type(exc).__name__)
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.close()

    begin = time.monotonic()
    cpu0 = os.times()
    await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.monotonic() - begin
    cpu1 = os.times()
    return {
        "mode": "burst",
        "sent": sent,
        "completed": completed,
        "errors": errors,
        "elapsed_s": round(elapsed, 4),
        "first_us": percentiles(first),
        "rest_us": percentiles(rest),
        "client_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 3),
    }


def _status_failure(conn: StreamConnection) -> str | None:
    return None if conn.status == 200 else f"status_{conn.status}"


RUNNERS = {"sequential": run_sequential, "slow": run_slow, "burst": run_burst}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.sse_client '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(args[0])
    if spec["host"] not in ("127.0.0.1", "localhost", "::1"):
        print("the benchmark client talks to loopback only", file=sys.stderr)
        return 2
    result = run(RUNNERS[spec["mode"]](spec))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
