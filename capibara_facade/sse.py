"""Relaying an upstream's Server-Sent Events to the client, event by event, bytes untouched.

Each read from the upstream is forwarded at once. The only bytes ever held back are the tail of an
event the upstream has not finished writing: a client cannot use half an event, and if the upstream dies
right there, the client must get a well-formed error event, not one glued onto half a JSON object.
Frames are otherwise never split, merged, re-ordered or re-serialised: role-only deltas, tool-call
fragments, `: ping` comments and the final usage chunk reach the client exactly as the upstream wrote
them. The one opt-in exception is a route that renames `model` in responses (`response_model = "alias"`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

import httpx

from .errors import envelope
from .forward import body_stream
from .wire import rename_model

__all__ = ["HEADERS", "SHUTDOWN_EVENT", "error_event", "relay"]

log = logging.getLogger(__name__)

# Fit for SSE behind proxies: no caching, and nginx must not buffer (X-Accel-Buffering).
HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_TERMINATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")


def error_event(message: str, type: str = "upstream_error", code: str | None = "upstream_error") -> bytes:
    """A mid-stream failure in OpenAI's error shape; the openai SDK raises it as `APIError`."""
    return b"data: " + envelope(message, type, None, code) + b"\n\n"


SHUTDOWN_EVENT = error_event("The server is shutting down; retry the request.", "server_error", "server_shutdown")


async def relay(
    response: httpx.Response, upstream_name: str, rename_to: str | None = None
) -> AsyncGenerator[bytes, None]:
    """The upstream's stream as complete events, as they arrive; an error event if the upstream breaks off."""
    pending = b""
    try:
        async for chunk in body_stream(response):
            data = pending + chunk if pending else chunk
            end = _complete_events_end(data)
            pending = data[end:]
            if end:
                yield _renamed(data[:end], rename_to) if rename_to else data[:end]
    except httpx.HTTPError as exc:
        log.warning("upstream %s broke off mid-stream: %s: %s", upstream_name, type(exc).__name__, exc)
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "broke off"
        yield error_event(f"The upstream {upstream_name!r} {kind} in the middle of the stream.")
        return
    if pending:  # the upstream ended without terminating its last event: pass the bytes on as they are
        yield _renamed(pending, rename_to) if rename_to else pending


def _complete_events_end(data: bytes) -> int:
    """Length of the longest prefix of `data` that ends with an event terminator (0 when there is none)."""
    end = 0
    for terminator in _TERMINATORS:
        found = data.rfind(terminator)
        if found >= 0:
            end = max(end, found + len(terminator))
    return end


def _renamed(events: bytes, public_name: str) -> bytes:
    """`events` with `model` renamed in each JSON `data:` line; every other byte, line endings included, kept."""
    lines = events.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith(b"data:") and b'"model"' in line:
            content = line.rstrip(b"\r\n")
            payload = content[5:].lstrip(b" ")
            renamed = rename_model(payload, public_name)
            if renamed is not payload:
                lines[index] = content[: len(content) - len(payload)] + renamed + line[len(content) :]
    return b"".join(lines)
