"""`create_app(config)`: the Litestar application, assembled from plain values.

The app owns one `Gateway` (catalog, upstream pool, keys) for its lifetime and closes it at shutdown.
Every error leaves through `_render`, in OpenAI's envelope; nothing renders a traceback to a client.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException

from .config import Config
from .errors import FacadeError, envelope
from .gateway import Gateway
from .routes import build_routes

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}  # fmt: skip
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def create_app(config: Config) -> Litestar:
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        # What exists now (imported modules, the app) lives as long as the process. Frozen, it is never
        # walked again by the garbage collector, whose full passes would otherwise stall every open stream
        # for tens of milliseconds under load.
        gc.freeze()
        try:
            yield
        finally:
            await gateway.aclose()

    cors = CORSConfig(
        allow_origins=list(config.cors.allow_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
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


def _render_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    body = envelope(
        exc.detail if status < 500 else "The server failed to handle the request.",
        _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
        None,
        _CODES.get(status),
    )
    return Response(body, status_code=status, media_type="application/json", headers=exc.headers)


def _render_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    body = envelope("The server failed to handle the request.", "server_error", None, "internal_error")
    return Response(body, status_code=500, media_type="application/json")
