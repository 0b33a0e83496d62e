"""The request path of every relayed endpoint — `POST /v1/chat/completions` (and `/api/chat`, turned into one),
`/v1/completions`, `/v1/embeddings`, `/v1/responses` — one request straight through:

    receive → authenticate → validate → resolve alias → limit → pick target → forward (stream or not) → account

What differs between endpoints is declared in `endpoints.py` (the view a body is validated into, how its
prompt is estimated, which fields may change on the way, how it streams); the path itself is one. A model
none of whose targets serves the endpoint is a 404 `endpoint_not_supported`, before any limit is charged.

The caller's limits are checked once the body is validated and the model resolved: the token reservation
needs the request's max_tokens and the model's cap (an invalid request never reaches a model server, so it
costs no more than its 400). The reservation is settled by `Gateway.account()`.

`pick target → forward` may run again, on another target or a fallback model, while the client has not had a
byte: after a connect error, an upstream 502/503/504, or a 429 whose Retry-After is short (routing.py says
which, and the retry budget how often). Never once a stream has started, and never after a whole answer timed
out: the upstream may still be generating it.

A chat completion to be stored (`store: true`, or `[store]` says so: `Gateway.capture`) keeps what the client
got — the whole answer, or each relayed piece of the stream — and `Gateway.account()` hands it to the store's
background writer once the answer is sent; nothing else on the path changes, and the client never waits.

Failures are raised as `FacadeError`s and rendered here, through the exchange, so that they carry the request
id. Once a stream has started, a failure can only be reported inside it, as an SSE error event. Every request
has one `RequestRecord`, which the stages fill in and `Gateway.account()` reads once at the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import httpx
from litestar.handlers import BaseRouteHandler, asgi
from litestar.types import Receive, Scope, Send

from .. import wire
from ..callers.identity import Caller
from ..catalog import Model, Route
from ..chat_request import ChatRequest
from ..config import Config
from ..endpoints import Endpoint, RequestView, read_response_id
from ..errors import FacadeError, ShuttingDown, UpstreamError, UpstreamUnavailable
from ..gateway import Gateway
from ..generation import Generation
from ..observe.record import Outcome, RequestRecord
from ..store.capture import Capture
from ..upstream import forward, sse
from ..upstream.forward import Reply
from ..upstream.routing import Attempts, Slot, Verdict
from ..upstream.upstreams import Upstream
from .exchange import ClientDisconnected, Exchange

__all__ = ["relay_route"]

log = logging.getLogger(__name__)

_RETRIED_STATUSES = frozenset((502, 503, 504))
T = TypeVar("T")
V = TypeVar("V", bound=RequestView)


def relay_route(
    path: str,
    name: str,
    endpoint: Endpoint[Any],
    gateway: Gateway,
    translate: Callable[[bytes, Config], bytes] | None = None,
    on_get: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None,
) -> BaseRouteHandler:
    """A POST route that relays its body to `endpoint` (`translate`d first, when it speaks another contract);
    `name` is the route's in the metrics and the request log. `on_get` answers GETs on the same path (one
    path is one handler)."""
    body_limit = gateway.config.server.max_body_bytes
    allowed = "GET, POST" if on_get is not None else "POST"

    @asgi(path, copy_scope=False)
    async def relay_route(scope: Scope, receive: Receive, send: Send) -> None:
        if on_get is not None and scope.get("method") == "GET":
            await on_get(scope, receive, send)
            return
        exchange = Exchange(scope, receive, send)
        generation = gateway.current  # this request's rules to its end, whatever a reload does meanwhile
        record = RequestRecord(name, exchange.request_id)
        gateway.trace(record, exchange.traceparent)
        try:
            exchange.require_method("POST", allowed)
            generation.admit_origin(exchange.origin)
            # Before the body: strangers get no buffer.
            caller = generation.callers.identify(
                exchange.authorization, exchange.peer, exchange.forwarded_for, exchange.real_ip
            )
            record.caller = caller.name
            body = await exchange.read_body(body_limit)
            if translate is not None:
                body = translate(body, generation.config)
            await _relay(gateway, generation, exchange, record, caller, endpoint, body)
        except FacadeError as error:
            record.refused(error)
            # Every answer to a limited caller says where its limits stand (a 429 carries its own already).
            admitted = record.admission.headers if record.admission is not None else None
            await exchange.respond_error(error, admitted)
        except ClientDisconnected:
            record.client_left(streaming=exchange.started)
            log.debug("client left before the answer was complete (request %s)", exchange.request_id)
        except asyncio.CancelledError:  # the server is stopping and its grace period is over
            record.outcome = Outcome.SHUTDOWN
            if not exchange.started:  # a started stream has had its error event already
                await exchange.respond_error(ShuttingDown("The server is shutting down; retry the request."))
        except Exception:  # a bug: logged with the request id, answered in OpenAI's shape if nothing was sent yet
            record.outcome = Outcome.ERROR
            log.exception("unexpected error on %s (request %s)", path, exchange.request_id)
            if not exchange.started:
                await exchange.respond_error(FacadeError("The server failed to handle the request."))
        finally:
            record.finish(exchange.status, exchange.bytes_out)
            await gateway.account(record)

    return relay_route


async def _relay(
    gateway: Gateway,
    generation: Generation,
    exchange: Exchange,
    record: RequestRecord,
    caller: Caller,
    endpoint: Endpoint[V],
    body: bytes,
) -> None:
    request = endpoint.read(body, generation.config.server.max_json_depth)
    record.asked(request.model, bool(request.stream))
    model = generation.callers.resolve(caller, generation.catalog.resolve, request.model)
    continued = endpoint.continued_response(request)
    origin = gateway.response_origins.upstream_of(continued) if continued else None
    order = generation.targets(model, endpoint.name, endpoint.path, origin)
    record.admission = await gateway.limit(caller, endpoint, request, model)
    attempts = gateway.attempts(generation, order, _affinity_key(model, request, exchange))
    upstream_request = _UpstreamRequest(gateway, endpoint, body, request, caller.max_tokens)
    if isinstance(request, ChatRequest):
        record.capture = upstream_request.capture = gateway.capture(caller, model, request, body)
    async with exchange.cancel_on_disconnect():
        if request.stream:
            reply = await _stream(gateway, exchange, record, upstream_request, attempts)
        else:
            reply = await _whole_answer(gateway, exchange, record, upstream_request, attempts)
    if reply is not None:
        if reply.failure is not None:
            record.upstream_failed(reply.failure)
        elif upstream_request.capture is not None and reply.status == 200:
            upstream_request.capture.answered(reply.content)
        await exchange.respond(reply.status, _answer_headers(reply.headers, record), reply.content)


async def _whole_answer(
    gateway: Gateway, exchange: Exchange, record: RequestRecord, request: _UpstreamRequest[V], attempts: Attempts
) -> Reply:
    reply: Reply | None = None
    endpoint = request.endpoint
    while (slot := await _next_slot(attempts, reply)) is not None:
        route = slot.target.route
        reply = await _attempt(forward.send, endpoint.path, slot, attempts, exchange, record, request.body_for(route))
        attempts.release(slot, _verdict(reply))
        # A whole answer that timed out is not tried again: the upstream may still be generating it.
        if not (_worth_retrying(reply, gateway) and attempts.may_retry()):
            if reply.status == 200:
                if (usage := endpoint.read_usage(reply.content)) is not None:
                    record.took_usage(usage)
                if endpoint.remembers_responses and (response_id := read_response_id(reply.content)):
                    gateway.response_origins.remember(response_id, route.upstream)
            if reply.status < 400 and (rename_to := _renamed_to(route)):
                return Reply(reply.status, reply.headers, wire.rename_model(reply.content, rename_to))
            return reply
        log.info("request %s: %s from %s, trying again", exchange.request_id, reply.failure, route.upstream)
    assert reply is not None
    return reply


async def _stream(
    gateway: Gateway, exchange: Exchange, record: RequestRecord, request: _UpstreamRequest[V], attempts: Attempts
) -> Reply | None:
    """Relay the stream; or, when every attempt was refused before streaming, the last refusal to answer with."""
    reply: Reply | None = None
    path = request.endpoint.path
    while (slot := await _next_slot(attempts, reply)) is not None:
        route = slot.target.route
        opened = await _attempt(forward.open_stream, path, slot, attempts, exchange, record, request.body_for(route))
        if isinstance(opened, Reply):  # refused before streaming: another target may take it
            reply = opened
            attempts.release(slot, _verdict(reply))
            if not (_worth_retrying(reply, gateway) and attempts.may_retry()):
                return reply
            log.info("request %s: %s from %s, trying again", exchange.request_id, reply.failure, route.upstream)
            continue
        verdict = Verdict.NONE
        try:
            await _relay_events(gateway, exchange, record, request, opened, route)
            verdict = Verdict.FAILURE if record.upstream_error else Verdict.SUCCESS
        finally:
            await opened.aclose()
            attempts.release(slot, verdict)
        return None
    return reply


async def _relay_events(
    gateway: Gateway,
    exchange: Exchange,
    record: RequestRecord,
    request: _UpstreamRequest[V],
    opened: httpx.Response,
    route: Route,
) -> None:
    endpoint = request.endpoint
    events = sse.relay(
        opened,
        route.upstream,
        record,
        rename_to=_renamed_to(route),
        hide_usage_chunk=endpoint.hides_usage(request.view, route),
        max_event_bytes=gateway.config.server.max_sse_event_bytes,
        typed_events=endpoint.typed_events,
        on_response_id=request.remembered_at(route) if endpoint.remembers_responses else None,
        collect=request.capture.relayed if request.capture is not None else None,
    )
    try:
        with gateway.streaming():
            async with aclosing(events):
                headers = _answer_headers([*forward.passthrough_headers(opened), *sse.HEADERS], record)
                await exchange.start(opened.status_code, headers)
                async for chunk in events:
                    await exchange.write(chunk)
        await exchange.finish()
    except asyncio.CancelledError:
        # The server is stopping and its grace period is over: end the stream with an error event, not a cut.
        # (If the client left instead, uvicorn drops these writes, and the cancel is theirs.)
        if exchange.started:
            await exchange.write(sse.SHUTDOWN_EVENT)
            await exchange.finish()
        raise


async def _attempt(
    call: Callable[[Upstream, str, bytes, str, RequestRecord], Awaitable[T]],
    path: str,
    slot: Slot,
    attempts: Attempts,
    exchange: Exchange,
    record: RequestRecord,
    upstream_body: bytes,
) -> T | Reply:
    """One attempt at the slot's target: what `call` (send or open_stream) returned, or the failure as a Reply."""
    record.resolved(slot.target.route)
    try:
        return await call(slot.target.upstream, path, upstream_body, exchange.upstream_request_id, record)
    except UpstreamError as error:
        return forward.failed_reply(error)
    except BaseException:  # the client left, or the server is stopping: no verdict on this upstream
        attempts.release(slot, Verdict.NONE)
        raise


async def _next_slot(attempts: Attempts, failed: Reply | None) -> Slot | None:
    """The next target's slot; None when nothing else can take the request, and the last failure is the answer."""
    try:
        return await attempts.next()
    except UpstreamUnavailable:
        if failed is None:
            raise
        return None


class _UpstreamRequest(Generic[V]):
    """The client's request to an endpoint, and the body each target gets (see the endpoint's `upstream_body`)."""

    __slots__ = ("body", "capture", "endpoint", "gateway", "max_tokens", "view")

    def __init__(self, gateway: Gateway, endpoint: Endpoint[V], body: bytes, view: V, max_tokens: int | None) -> None:
        self.gateway, self.endpoint = gateway, endpoint
        self.body, self.view, self.max_tokens = body, view, max_tokens  # max_tokens: the caller's cap
        self.capture: Capture | None = None  # the answer is caught for [store]

    def body_for(self, route: Route) -> bytes:
        return self.endpoint.upstream_body(self.body, self.view, route, self.max_tokens)

    def remembered_at(self, route: Route) -> Callable[[str], None]:
        """What remembers that `route`'s upstream created a response, for the requests that continue it."""
        origins, upstream = self.gateway.response_origins, route.upstream
        return lambda response_id: origins.remember(response_id, upstream)


def _answer_headers(headers: list[tuple[bytes, bytes]], record: RequestRecord) -> list[tuple[bytes, bytes]]:
    """The answer's headers: the upstream's (already filtered), Server-Timing, which model served it when a
    fallback did, and the caller's own rate-limit state, which replaces any the upstream sent (those describe
    the facade's key at the upstream, not the client's limits)."""
    admission = record.admission
    if admission is not None and admission.headers:
        headers = [header for header in headers if not header[0].startswith(b"x-ratelimit-")]
        headers.extend(admission.headers)
    headers.append(record.server_timing())
    if record.served_by is not None and record.served_by != record.model:
        headers.append((b"x-capibara-served-model", record.served_by.encode()))
    return headers


def _verdict(reply: Reply) -> str:
    """A connect error, a reset, a timeout, a broken answer or a 5xx counts against the upstream's breaker."""
    failed = reply.failure in ("connect", "reset", "timeout", "broke_off", "status_5xx")
    return Verdict.FAILURE if failed else Verdict.SUCCESS


def _worth_retrying(reply: Reply, gateway: Gateway) -> bool:
    """Whether another target may do better: this one could not be reached or dropped the connection before
    answering (it died: nothing can run twice), it is overloaded or restarting (502/503/504), or it asks to
    be left alone for less than `max_retry_after_seconds`. Retries never go to the same target again."""
    if reply.failure in ("connect", "reset") or (reply.failure == "status_5xx" and reply.status in _RETRIED_STATUSES):
        return True
    if reply.status != 429:
        return False
    retry_after = next((value for name, value in reply.headers if name == b"retry-after"), b"")
    return retry_after.isdigit() and int(retry_after) <= gateway.config.routing.max_retry_after_seconds


def _renamed_to(route: Route) -> str | None:
    return route.public_name if route.rename_response else None


def _affinity_key(model: Model, request: RequestView, exchange: Exchange) -> str | None:
    if model.affinity == "user":
        return request.user if isinstance(request.user, str) else None
    if model.affinity == "session":
        return exchange.session_id.decode("latin-1") if exchange.session_id else None
    return None
