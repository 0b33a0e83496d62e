"""The facade's routes. The chat path reads straight through:

    receive → authenticate → validate → resolve alias → choose upstream → forward (stream or not) → answer

Failures are raised as `FacadeError`s, which render themselves in OpenAI's envelope: the chat routes send
them through their exchange (so that they carry the request id), Litestar's exception handler in `app.py`
does it for everything else. Once a stream has started, a failure can only be reported inside it, as an
SSE error event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import httpx
import msgspec
from litestar import Request, Response, get
from litestar.handlers import BaseRouteHandler, asgi
from litestar.types import Receive, Scope, Send

from . import forward, legacy, sse, wire
from .catalog import Route
from .errors import FacadeError, envelope
from .exchange import ClientDisconnected, Exchange
from .gateway import Gateway

__all__ = ["build_routes"]

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_JSON = "application/json"


def build_routes(gateway: Gateway) -> list[BaseRouteHandler]:
    def card(route: Route) -> wire.ModelCard:
        return wire.ModelCard(route.public_name, gateway.catalog.created, route.owned_by)

    models_body = _encode(wire.ModelList([card(route) for route in gateway.catalog.routes()]))

    @get("/v1/models", sync_to_thread=False)
    def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
        gateway.authenticate(_authorization(request))
        return Response(models_body, media_type=_JSON)

    @get("/v1/models/{model_id:str}", sync_to_thread=False)
    def retrieve_model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
        gateway.authenticate(_authorization(request))
        return Response(_encode(card(gateway.catalog.get(model_id))), media_type=_JSON)

    @get("/health")
    async def health() -> Response[bytes]:
        """Liveness: the facade answers; each upstream's last known state is reported, never waited for."""
        states = gateway.pool.last_states()
        return Response(_encode({"status": "ok", "upstreams": states}), media_type=_JSON)

    @get("/ready")
    async def ready() -> Response[bytes]:
        """Readiness: 503 while no upstream is reachable, so a load balancer sends traffic elsewhere."""
        states = await gateway.pool.probe_all()
        is_ready = any(state.reachable for state in states.values())
        body = _encode({"status": "ready" if is_ready else "unavailable", "upstreams": states})
        return Response(body, media_type=_JSON, status_code=200 if is_ready else 503)

    legacy_defaults = gateway.config.legacy_chat
    return [
        _chat_route("/v1/chat/completions", gateway, lambda body: body),
        _chat_route("/api/chat", gateway, lambda body: legacy.to_chat_completion(body, legacy_defaults)),
        list_models,
        retrieve_model,
        health,
        ready,
    ]


def _authorization(request: Request[Any, Any, Any]) -> bytes | None:
    value = request.headers.get("authorization")
    return value.encode("latin-1") if value is not None else None


def _chat_route(path: str, gateway: Gateway, to_chat_request: Callable[[bytes], bytes]) -> BaseRouteHandler:
    """A POST route that turns its body into a chat-completion request and relays it."""
    body_limit = gateway.config.server.max_body_bytes

    @asgi(path, copy_scope=False)
    async def relay_route(scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(scope, receive, send)
        try:
            exchange.require_method("POST")
            gateway.admit_origin(exchange.origin)
            gateway.authenticate(exchange.authorization)  # before the body: strangers get no buffer
            body = await exchange.read_body(body_limit)
            await _relay_chat(gateway, exchange, to_chat_request(body))
        except FacadeError as error:  # rendered here so that it carries the request id too
            await exchange.respond(error.status, error.response_headers(), error.body())
        except ClientDisconnected:
            log.debug("client left before the answer was complete (request %s)", exchange.request_id)
        except Exception:  # a bug: logged with the request id, answered in OpenAI's shape if nothing was sent yet
            log.exception("unexpected error on %s (request %s)", path, exchange.request_id)
            if not exchange.started:
                await exchange.respond(500, *_INTERNAL_ERROR)

    return relay_route


_INTERNAL_ERROR = (
    [(b"content-type", b"application/json")],
    envelope("The server failed to handle the request.", "server_error", None, "internal_error"),
)


async def _relay_chat(gateway: Gateway, exchange: Exchange, body: bytes) -> None:
    chat = wire.read_chat(body)  # TODO(lead): max_json_depth once wire has it
    route = gateway.catalog.resolve(chat.model)
    upstream = gateway.pool.pick(route.upstream)
    upstream_body = wire.upstream_body(body, chat, route)
    rename_to = route.public_name if route.rename_response else None
    hide_usage_chunk = wire.hides_usage(chat, route)

    if not chat.stream:
        async with exchange.cancel_on_disconnect():
            reply = await forward.send(upstream, upstream_body, exchange.upstream_request_id)
        content = wire.rename_model(reply.content, rename_to) if rename_to and reply.status < 400 else reply.content
        await exchange.respond(reply.status, reply.headers, content)
        return

    async with exchange.cancel_on_disconnect():
        opened = await forward.open_stream(upstream, upstream_body, exchange.upstream_request_id)
        if isinstance(opened, httpx.Response):
            events = sse.relay(
                opened,
                upstream.name,
                rename_to=rename_to,
                hide_usage_chunk=hide_usage_chunk,
                max_event_bytes=gateway.config.server.max_sse_event_bytes,
            )
            try:
                async with aclosing(events):
                    await exchange.start(opened.status_code, [*forward.passthrough_headers(opened), *sse.HEADERS])
                    async for chunk in events:
                        await exchange.write(chunk)
            except asyncio.CancelledError:
                # The server is stopping and its grace period is over: end the stream with an error event, not
                # a cut. (If the client left instead, uvicorn drops these writes, and the cancel is theirs.)
                if exchange.started:
                    await exchange.write(sse.SHUTDOWN_EVENT)
                    await exchange.finish()
                raise
            finally:
                await opened.aclose()
    if isinstance(opened, forward.Reply):  # refused before streaming: an ordinary error answer
        await exchange.respond(opened.status, opened.headers, opened.content)
    else:
        await exchange.finish()
