"""A small OpenAI-compatible model server, bundled so the whole path works without a GPU.

It answers deterministically (the same request gives the same bytes), streams word by word, calls tools
when asked to (split across deltas, in parallel when several are required), and has fault switches the
tests drive, as CLI flags or per request in a vendor field `"demo": {...}` that the facade passes through:

    delay         seconds before answering                  chunk_delay   seconds between streamed chunks
    status        answer with this HTTP status instead       plain_error   that error as plain text, not JSON
    drop_after    stream: break the connection after N chunks

`GET /_demo/requests` lists what it received, with each request's outcome (`completed`,
`client_disconnected`, `dropped`), so tests can prove the facade closed an abandoned request.

Besides chat it serves `/v1/completions`, `/v1/embeddings` and `/v1/responses` (see `demo_endpoints.py`),
with the same switches.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import msgspec
import uvicorn

from .demo_endpoints import (
    CompletionAnswer,
    CompletionRequest,
    EmbeddingAnswer,
    EmbeddingRequest,
    Refused,
    ResponseRequest,
    Responses,
)

__all__ = ["DemoUpstream", "Faults", "add_fault_options", "serve_demo_upstream"]

MODELS = ("aya_expanse_multilingual", "phi4_fast", "mistral_balanced", "qwen_coder", "gemma3_multimodal")
CREATED = 1764115200

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Faults(msgspec.Struct, kw_only=True):
    delay: float = 0.0
    chunk_delay: float = 0.0
    status: int = 200
    plain_error: bool = False
    drop_after: int | None = None


class DemoRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    demo: dict[str, Any] | None = None


class Record(msgspec.Struct):
    request_id: str | None
    body: str
    authorization: str | None
    traceparent: str | None = None
    outcome: str = "in_progress"


class DroppedConnection(Exception):
    """Raised after the response started: uvicorn aborts the connection mid-stream, as a crashing server would."""


_encode = msgspec.json.Encoder().encode


class DemoUpstream:
    def __init__(self, faults: Faults, models: tuple[str, ...] = MODELS) -> None:
        self.faults = faults
        self.models = models
        self.records: collections.deque[Record] = collections.deque(maxlen=500)
        self.responses = Responses()
        self._request_types: dict[str, type[Any]] = {
            "/v1/chat/completions": DemoRequest,
            "/v1/completions": CompletionRequest,
            "/v1/embeddings": EmbeddingRequest,
            "/v1/responses": ResponseRequest,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            return await _json(send, 200, {"status": "ok"})
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "demo"} for m in self.models]
            return await _json(send, 200, {"object": "list", "data": data})
        if method == "GET" and path == "/_demo/requests":
            return await _json(send, 200, list(self.records))
        if method == "POST" and path in self._request_types:
            return await self._endpoint(scope, receive, send, path)
        return await _json(send, 404, _error(f"No route {method} {path}", "invalid_request_error", "not_found"))

    def _answer_to(self, request: Any) -> Any:
        """The answer to a request of one of the endpoints (it has `completion()` and `frames()`)."""
        if isinstance(request, CompletionRequest):
            return CompletionAnswer(request)
        if isinstance(request, EmbeddingRequest):
            return EmbeddingAnswer(request)
        if isinstance(request, ResponseRequest):
            return self.responses.answer(request)
        return _Answer(request)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        record = Record(
            request_id=_text(headers.get(b"x-request-id")),
            body=body.decode("utf-8", "replace"),
            authorization=_text(headers.get(b"authorization")),
            traceparent=_text(headers.get(b"traceparent")),
        )
        self.records.append(record)
        try:
            request = msgspec.json.decode(body, type=self._request_types[path])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            record.outcome = "rejected"
            return await _json(send, 400, _error(str(exc), "invalid_request_error", None))
        faults = msgspec.convert({**msgspec.to_builtins(self.faults), **(request.demo or {})}, Faults)
        disconnected = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, disconnected))
        try:
            record.outcome = await self._answer(request, faults, send, disconnected)
        except DroppedConnection:
            record.outcome = "dropped"
            raise
        finally:
            watcher.cancel()

    async def _answer(self, request: Any, faults: Faults, send: Send, disconnected: asyncio.Event) -> str:
        if await _sleep_unless(disconnected, faults.delay):
            return "client_disconnected"
        if faults.status != 200:
            if faults.plain_error:
                text = b"Internal Server Error\nTraceback: File /srv/model/server.py, line 42\n"
                await _raw(send, faults.status, b"text/plain", text)
            else:
                await _json(send, faults.status, _error(f"demo fault {faults.status}", "server_error", "demo"))
            return "completed"
        if request.model not in self.models:
            error = _error(f"The model '{request.model}' does not exist", "invalid_request_error", "model_not_found")
            await _json(send, 404, error)
            return "completed"
        try:
            answer = self._answer_to(request)
            if not request.stream:
                await _raw(send, 200, b"application/json", _encode(answer.completion()))
                return "completed"
            frames = answer.frames()
        except Refused as refused:
            await _json(send, refused.status, refused.document)
            return "completed"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for index, frame in enumerate(frames):
            if faults.drop_after is not None and index >= faults.drop_after:
                raise DroppedConnection
            if index and await _sleep_unless(disconnected, faults.chunk_delay):
                return "client_disconnected"
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return "client_disconnected" if disconnected.is_set() else "completed"


class _Answer:
    """The deterministic reply to one request, whole or as SSE frames."""

    def __init__(self, request: DemoRequest) -> None:
        self.request = request
        # From what was asked, not the body's bytes: a gateway that adds stream options gets the same id.
        self.id = "chatcmpl-demo-" + hashlib.sha256(_encode([request.model, request.messages])).hexdigest()[:16]
        last_user: dict[str, Any] = next((m for m in reversed(request.messages) if m.get("role") == "user"), {})
        self.prompt = _content_text(last_user.get("content"))
        words = f"Hola! You said: {self.prompt}".split()
        limit = request.max_completion_tokens or request.max_tokens
        self.words = words[:limit] if limit else words
        self.truncated = len(self.words) < len(words)
        self.tool_calls = self._tool_calls()
        self.prompt_tokens = sum(len(_content_text(m.get("content")).split()) for m in request.messages)

    def _tool_calls(self) -> list[dict[str, Any]]:
        tools = [t["function"]["name"] for t in self.request.tools or () if "function" in t]
        choice = self.request.tool_choice
        if isinstance(choice, dict):
            called = [choice.get("function", {}).get("name")]
        elif choice == "required" and tools:
            called = tools if self.request.parallel_tool_calls is not False else tools[:1]
        else:
            return []
        arguments = _encode({"text": self.prompt}).decode()
        return [
            {
                "id": f"call_{index}_{self.id[-8:]}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for index, name in enumerate(called)
        ]

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "length" if self.truncated else "stop"

    def usage(self) -> dict[str, int]:
        completion = len(self.words) if not self.tool_calls else len(self.tool_calls) * 8
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None if self.tool_calls else " ".join(self.words)}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": CREATED,
            "model": self.request.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage(),
        }

    def frames(self) -> list[bytes]:
        deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
        if self.tool_calls:
            for index, call in enumerate(self.tool_calls):
                head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
                deltas.append(({"tool_calls": [{"index": index, **head}]}, None))
                arguments = call["function"]["arguments"]
                middle = len(arguments) // 2
                for piece in (arguments[:middle], arguments[middle:]):
                    deltas.append(({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None))
        else:
            for position, word in enumerate(self.words):
                deltas.append(({"content": word if position == 0 else " " + word}, None))
        deltas.append(({}, self.finish_reason))
        frames = [self._chunk([{"index": 0, "delta": d, "logprobs": None, "finish_reason": f}]) for d, f in deltas]
        frames.insert(1, b": ping\n\n")  # SSE comments must reach clients untouched
        options = self.request.stream_options or {}
        if options.get("include_usage"):
            frames.append(self._chunk([], usage=self.usage()))
        frames.append(b"data: [DONE]\n\n")
        return frames

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.request.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + _encode(chunk) + b"\n\n"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _error(message: str, type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


async def _json(send: Send, status: int, document: Any) -> None:
    await _raw(send, status, b"application/json", _encode(document))


async def _raw(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()


async def _sleep_unless(disconnected: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`; True if the client disconnected meanwhile (or already had)."""
    if seconds > 0:
        with suppress(TimeoutError):
            await asyncio.wait_for(disconnected.wait(), seconds)
    return disconnected.is_set()


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--chunk-delay", type=float, default=0.03, help="seconds between streamed chunks")
    parser.add_argument("--status", type=int, default=200, help="answer chat completions with this HTTP status")
    parser.add_argument("--plain-error", action="store_true", help="send that error as plain text")
    parser.add_argument("--drop-after", type=int, default=None, help="break streams after N chunks")


def serve_demo_upstream(args: argparse.Namespace) -> None:
    faults = Faults(
        delay=args.delay,
        chunk_delay=args.chunk_delay,
        status=args.status,
        plain_error=args.plain_error,
        drop_after=args.drop_after,
    )
    uvicorn.run(
        DemoUpstream(faults),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
