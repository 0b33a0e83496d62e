"""One HTTP exchange at the ASGI level, for the proxy routes that run without framework machinery.

The chat routes are the facade's hot path, so they are Litestar `@asgi` handlers: no request object, no
dependency injection, no response object (measured: 16-23% less CPU per request). What those layers
would have done for them is here: read the body under a size limit, read the three headers we use,
send a response, and notice a client that goes away so the upstream request can be closed at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.types import Receive, Scope, Send

from ..errors import FacadeError, InvalidRequest, MethodNotAllowed, PayloadTooLarge

__all__ = ["ClientDisconnected", "Exchange"]

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID_NAMESPACE = uuid.UUID("5f0e2bb4-7a52-4c1e-9d6c-6361706962c6")


def _as_uuid(request_id: str) -> str:
    try:
        uuid.UUID(request_id)
    except ValueError:
        return uuid.uuid5(_REQUEST_ID_NAMESPACE, request_id).hex
    return request_id


class ClientDisconnected(Exception):
    """The client closed the connection; nobody is left to answer."""


class Exchange:
    __slots__ = (
        "authorization",
        "bytes_out",
        "content_length",
        "forwarded_for",
        "origin",
        "real_ip",
        "receive",
        "request_id",
        "scope",
        "send",
        "session_id",
        "started",
        "status",
        "traceparent",
        "upstream_request_id",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started = False  # the response has begun: a failure can no longer change its status
        self.status = 0
        self.bytes_out = 0
        self.authorization: bytes | None = None
        self.origin: bytes | None = None
        self.traceparent: bytes | None = None
        self.session_id: bytes | None = None
        self.content_length: int | None = None
        self.forwarded_for: bytes | None = None  # only believed from a trusted proxy (callers/client_address.py)
        self.real_ip: bytes | None = None
        request_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                self.authorization = value
            elif name == b"content-length" and value.isdigit():
                self.content_length = int(value)
            elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                request_id = value
            elif name == b"origin":
                self.origin = value
            elif name == b"traceparent":
                self.traceparent = value
            elif name == b"x-session-id":
                self.session_id = value
            elif name == b"x-forwarded-for":  # several headers mean one list, in order
                self.forwarded_for = value if self.forwarded_for is None else self.forwarded_for + b"," + value
            elif name == b"x-real-ip":
                self.real_ip = value
        # Returned to the client and sent upstream, so one id follows a request through every log. Upstreams
        # get it in UUID form: llama.cpp's server answers an empty 400 to any other X-Request-ID. A client's
        # own non-UUID id is mapped to a stable UUID (uuid5), so the two logs can still be joined.
        if request_id is None:
            self.request_id = self.upstream_request_id = os.urandom(16).hex()
        else:
            self.request_id = request_id.decode()
            self.upstream_request_id = _as_uuid(self.request_id)

    @property
    def peer(self) -> str | None:
        """The TCP peer's address (nginx's, behind nginx)."""
        client = self.scope.get("client")
        return client[0] if client else None

    def require_method(self, method: str, allow: str | None = None) -> None:
        """405 for any other method; `allow`: every method the path answers (default: `method`)."""
        used = self.scope.get("method")
        if used != method:
            allowed = allow or method
            raise MethodNotAllowed(f"Method {used} is not allowed here; use {allowed}.", allow=allowed)

    async def read_body(self, limit: int) -> bytes:
        """The whole request body; 413 as soon as it is known to exceed `limit` bytes."""
        if self.content_length is not None and self.content_length > limit:
            raise PayloadTooLarge(f"Request body of {self.content_length} bytes exceeds the limit of {limit}.")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not body:
            raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
        return body

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self.start(status, [*headers, (b"content-length", str(len(body)).encode())])
        self.bytes_out += len(body)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def respond_error(self, error: FacadeError, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = error.response_headers()
        if extra_headers:
            headers.extend(extra_headers)
        await self.respond(error.status, headers, error.body())

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        headers = [*headers, (b"x-request-id", self.request_id.encode())]
        self.started = True
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    @asynccontextmanager
    async def cancel_on_disconnect(self) -> AsyncIterator[None]:
        """Run the block; if the client disconnects meanwhile, cancel it and raise `ClientDisconnected`.

        Cancelling the block is what closes the upstream connection while a request is still waiting for
        its answer or streaming it, so the model server stops generating for nobody.
        """
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            message: Any = await self.receive()
            while message["type"] != "http.disconnect":  # pragma: no cover - body was already read
                message = await self.receive()
            gone = True
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            yield
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            raise ClientDisconnected from None
        finally:
            watcher.cancel()
