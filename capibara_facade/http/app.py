"""`create_app(config)`: the Litestar application, assembled from plain values.

The app owns one `Gateway` for its lifetime and closes it at shutdown; SIGHUP makes it reload its config
(`load` reads it again). Every error leaves through `_render`, in OpenAI's envelope; nothing renders a
traceback to a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException

from ..config import Config
from ..errors import FacadeError, InvalidRequest, MethodNotAllowed, PayloadTooLarge, RouteNotFound, envelope
from ..gateway import Gateway
from .routes import build_routes

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(config: Config, load: Callable[[], Config] | None = None) -> Litestar:
    gateway = Gateway(config, load)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        # What exists now (imported modules, the app) lives as long as the process. Frozen, it is never
        # walked again by the garbage collector, whose full passes would otherwise stall every open stream
        # for tens of milliseconds under load.
        gc.freeze()
        await gateway.open_store()
        gateway.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread, or no signals
            loop.add_signal_handler(signal.SIGHUP, gateway.reload)
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            await gateway.aclose()

    cors = CORSConfig(
        allow_origins=list(config.cors.allow_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        # The openai SDK in a browser sends x-stainless-* headers too: allow what the preflight asks for.
        allow_headers=["*"],
        expose_headers=["x-request-id"],
        max_age=config.cors.max_age_seconds,
    )
    return Litestar(
        route_handlers=build_routes(gateway),
        lifespan=[lifespan],
        cors_config=cors,
        exception_handlers={FacadeError: _render, HTTPException: _render_http, Exception: _render_unexpected},
        # Litestar's default logging config raises the root logger to INFO (httpx then logs every call);
        # the CLI configures logging once, from the config.
        logging_config=None,
        openapi_config=None,
        request_max_body_size=config.server.max_body_bytes,
    )


def _render(_: Request[Any, Any, Any], exc: FacadeError) -> Response[bytes]:
    return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers())


def _render_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own HTTP errors (unknown path, wrong method, bad path parameter) as the facade's."""
    if exc.status_code >= 500:
        return _render_unexpected(request, exc)
    if exc.status_code == 404:  # in OpenAI's words, which name what was asked for
        error: FacadeError = RouteNotFound(f"Invalid URL ({request.method} {request.url.path})")
    else:
        error = _FRAMEWORK_ERRORS.get(exc.status_code, InvalidRequest)(exc.detail)
    return Response(error.body(), status_code=exc.status_code, media_type="application/json", headers=exc.headers)


_FRAMEWORK_ERRORS: dict[int, type[FacadeError]] = {
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def _render_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    body = envelope("The server failed to handle the request.", "server_error", None, "internal_error")
    return Response(body, status_code=500, media_type="application/json")
