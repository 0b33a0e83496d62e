"""The facade's routes: the relayed endpoints (chat, completions, embeddings, responses: their path is
`chat.py`), the model list, health, readiness and metrics. Failures are raised as `FacadeError`s, which
Litestar's exception handler in `app.py` renders in OpenAI's envelope (the relayed routes render theirs
through their exchange, with the request id).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response, delete, get
from litestar.handlers import BaseRouteHandler

from ..callers.identity import Caller
from ..config import Config
from ..endpoints import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from ..errors import FacadeError, PermissionDenied
from ..gateway import Gateway
from ..generation import Generation
from ..observe.metrics import CONTENT_TYPE
from ..observe.record import RequestRecord
from . import legacy
from .chat import relay_route
from .stored import list_completions, stored_routes

__all__ = ["build_routes"]

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_JSON = "application/json"


def build_routes(gateway: Gateway) -> list[BaseRouteHandler]:
    async def models_answer(
        request: Request[Any, Any, Any], body_of: Callable[[Generation, Caller], bytes]
    ) -> Response[bytes]:
        generation = gateway.current
        record = RequestRecord("models", request.headers.get("x-request-id") or os.urandom(16).hex())
        status, body = 200, b""
        try:
            headers = request.headers
            caller = generation.callers.identify(
                _header(headers.get("authorization")),
                request.client.host if request.client else None,
                _header(headers.get("x-forwarded-for")),
                _header(headers.get("x-real-ip")),
            )
            record.caller = caller.name
            body = body_of(generation, caller)
            return Response(body, media_type=_JSON)
        except FacadeError as error:  # rendered by the app's handler
            record.refused(error)
            status, body = error.status, error.body()
            raise
        finally:
            record.finish(status, len(body))
            await gateway.account(record)

    @get("/v1/models")
    async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
        """The models the caller may use."""
        return await models_answer(request, lambda generation, caller: generation.models_body_for(caller))

    @get("/v1/models/{model_id:str}")
    async def retrieve_model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
        def card(generation: Generation, caller: Caller) -> bytes:
            model = generation.callers.resolve(caller, generation.catalog.get, model_id)
            return _encode(generation.card(model))

        return await models_answer(request, card)

    @delete("/v1/models/{model_id:str}", status_code=200)
    async def delete_model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
        """OpenAI deletes only fine-tuned models their owner made; nobody owns these: a permission error, once
        the caller is known (a wrong key is still a 401)."""

        def refusal(generation: Generation, caller: Caller) -> bytes:
            raise PermissionDenied(f"You do not have permission to delete the model {model_id!r}.", param="model")

        return await models_answer(request, refusal)

    @get("/health")
    async def health() -> Response[bytes]:
        """Liveness: the facade answers; each upstream's last known state is reported, never waited for;
        which config generation is in use, with the last reload's result; and whether the rate limits' store
        answers."""
        states = gateway.current.pool.last_states()
        body = {"status": "ok", "upstreams": states, "config": gateway.last_reload, "limiter": gateway.limiter.state()}
        return Response(_encode(body), media_type=_JSON)

    @get("/ready")
    async def ready() -> Response[bytes]:
        """Readiness: 503 while no upstream is reachable (or all are ejected), so a load balancer sends
        traffic elsewhere."""
        states = await gateway.current.pool.probe_all()
        is_ready = any(state.reachable and state.breaker != "open" for state in states.values())
        body = _encode({"status": "ready" if is_ready else "unavailable", "upstreams": states})
        return Response(body, media_type=_JSON, status_code=200 if is_ready else 503)

    def from_legacy(body: bytes, config: Config) -> bytes:
        return legacy.to_chat_completion(body, config.legacy_chat, config.server.max_json_depth)

    routes = [
        relay_route(CHAT.path, "chat", CHAT, gateway, on_get=list_completions(gateway)),
        *stored_routes(gateway),
        relay_route("/api/chat", "api_chat", CHAT, gateway, from_legacy),
        *(
            relay_route(endpoint.path, endpoint.name, endpoint, gateway)
            for endpoint in (COMPLETIONS, EMBEDDINGS, RESPONSES)
        ),
        list_models,
        retrieve_model,
        delete_model,
        health,
        ready,
    ]
    if gateway.metrics is not None:
        exposition = gateway.metrics

        @get("/metrics", sync_to_thread=False)
        def metrics() -> Response[bytes]:
            """Prometheus text format; with several workers, every worker's counts (see metrics.py)."""
            return Response(exposition.render(), media_type=CONTENT_TYPE)

        routes.append(metrics)
    return routes


def _header(value: str | None) -> bytes | None:
    return value.encode("latin-1") if value is not None else None
