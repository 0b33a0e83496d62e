"""Forwarding to an upstream: `send()` for a whole answer, `open_stream()` for Server-Sent Events.

An upstream's 4xx with a JSON body reaches the client with its status and body unchanged. An upstream's
5xx keeps its status, but its body is replaced by the facade's own envelope: model servers put stack
traces and file paths there (llama.cpp's does), and the client can do nothing with them. A non-JSON 4xx,
a redirect, or a 401/403 (the facade's upstream key was refused, not the client's) is a 502. The original
is logged.

Requests go straight to the upstream's httpx transport (`handle_async_request`), not through
`AsyncClient.send`: the client's auth, redirect, cookie and event-hook layers do nothing for a proxy
and cost ~20% of the facade's CPU per request (py-spy, one worker at 32 concurrent requests).

This is the one place where httpx's exceptions become the facade's: an upstream that cannot be reached
is a 502, one that is too slow a 504.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import msgspec

from .errors import UpstreamError, UpstreamTimeout, envelope
from .upstreams import Upstream

__all__ = ["Reply", "body_stream", "open_stream", "passthrough_headers", "send"]

log = logging.getLogger(__name__)

# Upstream response headers the client does not get: those that describe one hop (the facade's server sets
# its own), and the request id, which the client gets in its own form (the upstream saw the UUID form).
_NOT_FORWARDED = frozenset(
    (b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate", b"proxy-connection", b"server", b"date", b"x-request-id")
)  # fmt: skip
_JSON = [(b"content-type", b"application/json")]
# Upstream statuses whose JSON body is meant for the client (401/403 would blame the client's key for the
# facade's upstream key).
_CLIENT_ERRORS = frozenset(range(400, 500)) - {401, 403, 407}


class Reply(msgspec.Struct):
    """A complete upstream answer, ready to send: status, end-to-end headers, body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes


async def send(upstream: Upstream, body: bytes, request_id: str) -> Reply:
    request = _request(upstream, body, request_id, upstream.timeout)
    with _translated(upstream):
        response = await upstream.transport.handle_async_request(request)
        content = await _read(response)
    return _reply(upstream, response, content)


async def open_stream(upstream: Upstream, body: bytes, request_id: str) -> httpx.Response | Reply:
    """The upstream's streaming response, open and 2xx; or, when it refused, its error as a `Reply`.

    The caller owns the open response and must `aclose()` it (on every path, client disconnects included).
    """
    request = _request(upstream, body, request_id, upstream.stream_timeout)
    with _translated(upstream):
        response = await upstream.transport.handle_async_request(request)
        if response.is_success:
            return response
        content = await _read(response)
    return _reply(upstream, response, content)


def body_stream(response: httpx.Response) -> httpx.AsyncByteStream:
    """The raw body of a response from `open_stream()`: the upstream's bytes, as they arrive."""
    assert isinstance(response.stream, httpx.AsyncByteStream)
    return response.stream


async def _read(response: httpx.Response) -> bytes:
    stream = body_stream(response)
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()


def passthrough_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in response.headers.raw if name.lower() not in _NOT_FORWARDED]


@contextmanager
def _translated(upstream: Upstream) -> Iterator[None]:
    """httpx's exceptions as the facade's: timeouts are 504, everything else that breaks the exchange 502."""
    try:
        yield
    except httpx.TimeoutException as exc:
        log.warning("upstream %s timed out: %s", upstream.name, exc)
        raise UpstreamTimeout(f"The upstream {upstream.name!r} did not answer in time.") from None
    except httpx.HTTPError as exc:
        log.warning("upstream %s failed: %s: %s", upstream.name, type(exc).__name__, exc)
        raise UpstreamError(f"The upstream {upstream.name!r} could not be reached or broke off.") from None


def _request(upstream: Upstream, body: bytes, request_id: str, timeout: httpx.Timeout) -> httpx.Request:
    headers = [*upstream.raw_headers, (b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    return httpx.Request(
        "POST", upstream.chat_url, headers=headers, content=body, extensions={"timeout": timeout.as_dict()}
    )


def _reply(upstream: Upstream, response: httpx.Response, content: bytes) -> Reply:
    status = response.status_code
    if response.is_success or (status in _CLIENT_ERRORS and _is_json(content)):
        return Reply(status, passthrough_headers(response), content)
    # Anything else is the upstream's own trouble: never show its text (it can carry file paths and stack
    # traces), log it. 5xx keeps its status; a refused facade key (401/403), a redirect or a non-JSON 4xx
    # is a 502: the client can do nothing about any of them.
    log.warning("upstream %s answered %s: %.500r", upstream.name, status, content)
    message = f"The upstream {upstream.name!r} failed with HTTP {status}."
    return Reply(status if status >= 500 else 502, _JSON, envelope(message, "upstream_error", code="upstream_error"))


def _is_json(content: bytes) -> bool:
    try:
        msgspec.json.decode(content)
    except msgspec.DecodeError:
        return False
    return True
