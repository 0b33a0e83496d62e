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
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import msgspec

from ..errors import UpstreamError, UpstreamTimeout, envelope
from ..observe.record import RequestRecord
from .upstreams import Upstream

__all__ = ["Reply", "body_stream", "failed_reply", "open_stream", "passthrough_headers", "send"]

log = logging.getLogger(__name__)

# Upstream response headers the client gets: an allow-list, never a deny-list, since whatever else a model
# server sets (CORS headers that would override the facade's policy, cookies, `X-Powered-By`, hop-by-hop
# headers) is either the facade's business or nobody's. The request id is the facade's own.
_FORWARDED = frozenset((b"content-type", b"content-encoding", b"retry-after", b"retry-after-ms", b"x-should-retry"))
_FORWARDED_PREFIXES = (b"x-ratelimit-", b"openai-")
# What ASGI servers refuse in a header value (uvicorn aborts the response): such an upstream answer is a 502.
_UNSAFE_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# On an upstream 429 or 503 the client is told when to come back, whatever else is replaced.
_RETRY_HEADERS = frozenset((b"retry-after", b"retry-after-ms"))
_JSON = [(b"content-type", b"application/json")]
# Upstream statuses whose JSON body is meant for the client (401/403 would blame the client's key for the
# facade's upstream key).
_CLIENT_ERRORS = frozenset(range(400, 500)) - {401, 403, 407}


class Reply(msgspec.Struct):
    """A complete upstream answer, ready to send: status, end-to-end headers, body; and, when the upstream
    failed, what kind of failure it was (for the metrics)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes
    failure: str | None = None


async def send(upstream: Upstream, path: str, body: bytes, request_id: str, record: RequestRecord) -> Reply:
    """The upstream's whole answer from its endpoint at `path`; its failure to give one as an `UpstreamError`
    (`failed_reply()` turns it into the answer the client gets)."""
    request = _request(upstream, path, body, request_id, upstream.timeout, record.upstream_traceparent)
    record.upstream_sent_at = sent = time.perf_counter()
    try:
        with _translated(upstream, answered=False):
            response = await upstream.transport.handle_async_request(request)
        record.upstream_answered_at = time.perf_counter()
        with _translated(upstream, answered=True):
            content = await _read(response)
    finally:
        record.upstream_wait += time.perf_counter() - sent
    return _reply(upstream, response, content)


async def open_stream(
    upstream: Upstream, path: str, body: bytes, request_id: str, record: RequestRecord
) -> httpx.Response | Reply:
    """The upstream's streaming response from its endpoint at `path`, open and 2xx; or, when it refused, its
    error as a `Reply`.

    The caller owns the open response and must `aclose()` it (on every path, client disconnects included).
    """
    request = _request(upstream, path, body, request_id, upstream.stream_timeout, record.upstream_traceparent)
    record.upstream_sent_at = sent = time.perf_counter()
    try:
        with _translated(upstream, answered=False):
            response = await upstream.transport.handle_async_request(request)
        record.upstream_answered_at = time.perf_counter()
        if response.is_success:
            return response
        with _translated(upstream, answered=True):
            content = await _read(response)
    finally:
        record.upstream_wait += time.perf_counter() - sent
    return _reply(upstream, response, content)


def failed_reply(error: UpstreamError) -> Reply:
    """The answer for an upstream that gave none (unreachable, too slow, broken), in OpenAI's envelope."""
    return Reply(error.status, error.response_headers(), error.body(), error.failure)


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
    """The upstream's headers the client may see (see `_FORWARDED`); 502 when one cannot be sent on."""
    forwarded = []
    for name, value in response.headers.raw:
        name = name.lower()
        if name in _FORWARDED or name.startswith(_FORWARDED_PREFIXES):
            if _UNSAFE_VALUE.search(value):
                raise UpstreamError(
                    "The upstream sent a malformed response header.",
                    code="upstream_bad_response",
                    failure="bad_response",
                )
            forwarded.append((name, value))
    return forwarded


@contextmanager
def _translated(upstream: Upstream, *, answered: bool) -> Iterator[None]:
    """httpx's exceptions as the facade's: timeouts are 504, everything else that breaks the exchange 502.

    The failure's kind says what a retry may do: `connect` (the request never left), `reset` (the connection
    was closed or reset before a byte of the answer: the server died, as under `kill -9`), `timeout`,
    `broke_off` (the answer had begun)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        log.warning("upstream %s timed out: %s", upstream.name, exc)
        failure = "connect" if isinstance(exc, httpx.ConnectTimeout) else "timeout"
        raise UpstreamTimeout(f"The upstream {upstream.name!r} did not answer in time.", failure=failure) from None
    except httpx.HTTPError as exc:
        log.warning("upstream %s failed: %s: %s", upstream.name, type(exc).__name__, exc)
        failure = "connect" if isinstance(exc, httpx.ConnectError) else "broke_off" if answered else "reset"
        message = f"The upstream {upstream.name!r} could not be reached or broke off."
        raise UpstreamError(message, failure=failure) from None


def _request(
    upstream: Upstream, path: str, body: bytes, request_id: str, timeout: httpx.Timeout, traceparent: bytes | None
) -> httpx.Request:
    headers = [*upstream.raw_headers, (b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    return httpx.Request(
        "POST", upstream.url(path), headers=headers, content=body, extensions={"timeout": timeout.as_dict()}
    )


def _reply(upstream: Upstream, response: httpx.Response, content: bytes) -> Reply:
    status = response.status_code
    if not 200 <= status <= 599:  # 1xx here, or a status line ASGI servers cannot send (999)
        log.warning("upstream %s answered with status %s", upstream.name, status)
        message = f"The upstream {upstream.name!r} sent an invalid HTTP status."
        raise UpstreamError(message, code="upstream_bad_response", failure="bad_response")
    if response.is_success or (status in _CLIENT_ERRORS and _is_json(content)):
        return Reply(status, passthrough_headers(response), content)
    # Anything else is the upstream's own trouble: never show its text (it can carry file paths, stack traces
    # and whatever secret the upstream echoes), nor log it; its status and size are enough to look further.
    # 5xx keeps its status, and so does a rate limit (429), both with the upstream's Retry-After; a refused
    # facade key (401/403), a redirect or another non-JSON 4xx is a 502: the client can do nothing about them.
    log.warning("upstream %s answered %s (%d bytes, not shown)", upstream.name, status, len(content))
    if status != 429 and status < 500:
        message = f"The upstream {upstream.name!r} failed with HTTP {status}."
        return Reply(502, _JSON, envelope(message, "upstream_error", code="upstream_error"), "bad_response")
    retry = [(name, value) for name, value in passthrough_headers(response) if name in _RETRY_HEADERS]
    if status == 429:
        message = f"The upstream {upstream.name!r} is rate limiting requests; retry later."
        body = envelope(message, "rate_limit_error", code="rate_limit_exceeded")
        return Reply(429, [*_JSON, *retry], body, "rate_limited")
    message = f"The upstream {upstream.name!r} failed with HTTP {status}."
    return Reply(status, [*_JSON, *retry], envelope(message, "upstream_error", code="upstream_error"), "status_5xx")


def _is_json(content: bytes) -> bool:
    try:
        msgspec.json.decode(content)
    except msgspec.DecodeError:
        return False
    return True
