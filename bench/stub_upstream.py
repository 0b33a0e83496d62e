"""A fast OpenAI-compatible stub upstream for the benchmark: a raw asyncio Protocol + httptools, on uvloop.

It must never be the bottleneck, so there is no framework here: every response is a pre-built byte string,
the request body is decoded only for the few fields that steer the reply, and streamed chunks are sent from
`loop.call_at` callbacks (no coroutine per stream).

Routes
    POST /v1/chat/completions   non-streaming: a small fixed chat completion (the request's `model` echoed).
                                `"stream": true`: SSE over chunked transfer encoding, `bench_chunks` chunks
                                (default 20) `bench_chunk_delay_ms` apart (default 5; chunk 0 goes out with the
                                headers), then `data: [DONE]`. Each chunk's `delta.content` is the stub's
                                `time.monotonic_ns()` at the moment it was written, so a client on this machine
                                can measure per-event transit delay exactly (CLOCK_MONOTONIC is system-wide).
    GET  /v1/models             a small model list.
    GET  /health                {"status":"ok"}.
    GET  /stats                 JSON counters of what was served (the bench checks that every request it sent
                                really reached the upstream). Not counted itself.
    GET  /stats/reset-peaks     restarts the `max_open_streams` gauge (returns the counters too).

Run: `python -m bench.stub_upstream --port 0` prints `READY <port>` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

import httptools
import msgspec

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
    uvloop = None  # type: ignore[assignment]


class ChatRequest(msgspec.Struct):
    """Only what steers the stub's answer; every other field is ignored (msgspec skips unknown fields)."""

    model: str = "bench-model"
    stream: bool = False
    bench_chunks: int = 20
    bench_chunk_delay_ms: float = 5.0


_decoder = msgspec.json.Decoder(ChatRequest)

STATS: dict[str, int] = {
    "chat": 0,
    "chat_stream": 0,
    "chunks_sent": 0,
    "models": 0,
    "health": 0,
    "other": 0,
    "bad_request": 0,
    "streams_aborted": 0,
    "connections_opened": 0,
    "open_connections": 0,
    "open_streams": 0,
    "max_open_streams": 0,
}

_JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error","code":"not_found"}}'
_BAD_REQUEST = b'{"error":{"message":"bad request body","type":"invalid_request_error","code":null}}'
_DONE_CHUNK = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


def _json_response(body: bytes, status: bytes = b"200 OK") -> bytes:
    head = _JSON_HEAD.replace(b"200 OK", status) if status != b"200 OK" else _JSON_HEAD
    return head % len(body) + body


_HEALTH = _json_response(b'{"status":"ok"}')
_MODELS = _json_response(
    b'{"object":"list","data":['
    b'{"id":"aya_expanse_multilingual","object":"model","created":1700000000,"owned_by":"bench"},'
    b'{"id":"phi4_fast","object":"model","created":1700000000,"owned_by":"bench"}]}'
)
_RESP_404 = _json_response(_NOT_FOUND, b"404 Not Found")
_RESP_400 = _json_response(_BAD_REQUEST, b"400 Bad Request")

_completion_cache: dict[str, bytes] = {}
_chunk_parts_cache: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}


def _completion(model: str) -> bytes:
    cached = _completion_cache.get(model)
    if cached is None:
        body = msgspec.json.encode(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hola, soy el stub del benchmark."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
            }
        )
        cached = _json_response(body)
        if len(_completion_cache) < 64:
            _completion_cache[model] = cached
    return cached


def _chunk_parts(model: str) -> tuple[bytes, bytes, bytes, bytes]:
    """Pieces of one SSE chunk around the timestamp: prefix, middle-for-normal, middle-for-last, suffix."""
    parts = _chunk_parts_cache.get(model)
    if parts is None:
        model_json = msgspec.json.encode(model)
        prefix = (
            b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":'
            + model_json
            + b',"choices":[{"index":0,"delta":{"content":"'
        )
        normal = b'"},"finish_reason":null}]}\n\n'
        last = b'"},"finish_reason":"stop"}]}\n\n'
        parts = (prefix, normal, last, b"")
        if len(_chunk_parts_cache) < 64:
            _chunk_parts_cache[model] = parts
    return parts


class _Stream:
    """One streamed answer, driven by loop.call_at on an absolute schedule (no drift)."""

    __slots__ = ("delay", "index", "loop", "model_parts", "proto", "start", "total")

    def __init__(self, proto: StubProtocol, model: str, total: int, delay_s: float) -> None:
        self.proto = proto
        self.loop = proto.loop
        self.model_parts = _chunk_parts(model)
        self.total = max(1, total)
        self.delay = max(0.0, delay_s)
        self.index = 0
        self.start = self.loop.time()

    def begin(self) -> None:
        STATS["open_streams"] += 1
        if STATS["open_streams"] > STATS["max_open_streams"]:
            STATS["max_open_streams"] = STATS["open_streams"]
        self.proto.transport.write(_SSE_HEAD)
        self.tick()

    def _event(self, last: bool) -> bytes:
        prefix, normal, final, _ = self.model_parts
        event = b"%s%d %s" % (prefix, time.monotonic_ns(), final if last else normal)
        return b"%x\r\n%s\r\n" % (len(event), event)

    def tick(self) -> None:
        transport = self.proto.transport
        if transport.is_closing():
            STATS["open_streams"] -= 1
            STATS["streams_aborted"] += 1
            self.proto.stream_finished()
            return
        if self.delay == 0.0:
            # Back-to-back: still one write per chunk, so a proxy sees them as separate sends when it can.
            while self.index < self.total:
                self.index += 1
                transport.write(self._event(self.index == self.total))
                STATS["chunks_sent"] += 1
        else:
            self.index += 1
            last = self.index == self.total
            transport.write(self._event(last))
            STATS["chunks_sent"] += 1
            if not last:
                self.loop.call_at(self.start + self.index * self.delay, self.tick)
                return
        transport.write(_DONE_CHUNK)
        STATS["open_streams"] -= 1
        self.proto.stream_finished()


class StubProtocol(asyncio.Protocol):
    __slots__ = ("body", "busy", "close_after", "loop", "parser", "pending", "transport", "url")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.url = b""
        self.body: list[bytes] = []
        self.busy = False  # a stream is being written on this connection
        self.close_after = False  # the client asked for Connection: close during a stream
        self.pending: list[tuple[bytes, bytes, bytes]] = []  # pipelined requests queued behind a stream

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        STATS["connections_opened"] += 1
        STATS["open_connections"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        STATS["open_connections"] -= 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.transport.close()
        except httptools.HttpParserError:
            self.transport.write(_RESP_400)
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        if self.busy:
            self.pending.append((method, self.url, body))
        else:
            self.handle(method, self.url, body)
        if not self.parser.should_keep_alive():
            if self.busy:
                self.close_after = True
            else:
                self.transport.close()

    def stream_finished(self) -> None:
        self.busy = False
        while self.pending and not self.busy:
            method, url, body = self.pending.pop(0)
            self.handle(method, url, body)
        if self.close_after and not self.busy:
            self.transport.close()

    def handle(self, method: bytes, url: bytes, body: bytes) -> None:
        path = url.split(b"?", 1)[0]
        write = self.transport.write
        if path == b"/v1/chat/completions" and method == b"POST":
            try:
                request = _decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                STATS["bad_request"] += 1
                write(_RESP_400)
                return
            if request.stream:
                STATS["chat_stream"] += 1
                self.busy = True
                _Stream(self, request.model, request.bench_chunks, request.bench_chunk_delay_ms / 1000).begin()
            else:
                STATS["chat"] += 1
                write(_completion(request.model))
        elif path == b"/health":
            STATS["health"] += 1
            write(_HEALTH)
        elif path == b"/v1/models":
            STATS["models"] += 1
            write(_MODELS)
        elif path == b"/stats":
            write(_json_response(msgspec.json.encode(STATS)))
        elif path == b"/stats/reset-peaks":
            STATS["max_open_streams"] = STATS["open_streams"]
            write(_json_response(msgspec.json.encode(STATS)))
        else:
            STATS["other"] += 1
            write(_RESP_404)


async def serve(host: str, port: int, ready: Any = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubProtocol, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stub_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("the benchmark stub listens on loopback only", file=sys.stderr)
        return 2
    run(serve(args.host, args.port))
    return 0


def run(coro: Any) -> Any:
    """asyncio.run on uvloop when it is there (uvloop.run avoids the deprecated uvloop.install())."""
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


if __name__ == "__main__":
    raise SystemExit(main())
