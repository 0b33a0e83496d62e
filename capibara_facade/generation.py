"""A generation: everything a request needs that a config reload can change, built from one config:
the catalog, the upstreams and their targets, the callers and their keys, the allowed origins.

A request takes the gateway's current generation once, when it arrives, and uses only that one to the end,
so a reload never changes the rules under a request or a stream in flight. A new generation reuses the
previous one's `Upstream` for every upstream whose config is unchanged (its connections, breaker and
requests in flight carry over); the upstreams it no longer has are closed once their last request is over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import msgspec

from .callers.identity import Caller, Callers
from .catalog import Catalog, Model
from .config import Config, UpstreamConfig
from .config import Endpoint as EndpointName
from .errors import EndpointNotSupported, OriginNotAllowed
from .upstream.routing import Target
from .upstream.upstreams import Pool, Upstream
from .wire import ModelCard, ModelList

__all__ = ["Generation"]

_encode = msgspec.json.Encoder().encode


class Generation:
    def __init__(
        self,
        number: int,
        config: Config,
        make_upstream: Callable[[str, UpstreamConfig], Upstream],
        previous: Generation | None = None,
    ) -> None:
        self.number = number
        self.config = config
        self.catalog: Catalog = Catalog(config, previous.catalog.created if previous is not None else None)
        kept: dict[str, Upstream] = previous.pool.upstreams if previous is not None else {}
        self.pool: Pool = Pool(
            {
                name: kept[name] if name in kept and kept[name].config == upstream else make_upstream(name, upstream)
                for name, upstream in config.upstreams.items()
            }
        )
        # (public name, endpoint) → the model's targets whose upstream serves that endpoint.
        self._serving = {
            (model.public_name, endpoint): _serving(self._targets_of(model), endpoint)
            for model in self.catalog.models()
            for endpoint in get_args(EndpointName)
        }
        self.callers = Callers(config)
        self._models_bodies: dict[frozenset[str], bytes] = {}  # by the set of models a caller may use
        origins = config.cors.allow_origins
        self._origins = None if "*" in origins else frozenset(origin.encode() for origin in origins)
        self.models_body = _encode(ModelList([self.card(model) for model in self.catalog.models()]))

    def card(self, model: Model) -> ModelCard:
        return ModelCard(model.public_name, self.catalog.created, model.owned_by)

    def admit_origin(self, origin: bytes | None) -> None:
        """Refuse a browser request from a site the CORS policy does not list, before any work is done.

        CORS alone only keeps such a site from reading the answer: a "simple" cross-site POST (text/plain,
        no preflight) would still run a generation. Clients other than browsers send no Origin."""
        if origin is not None and self._origins is not None and origin not in self._origins:
            raise OriginNotAllowed(f"Requests from the origin {origin.decode('latin-1')!r} are not allowed.")

    def models_body_for(self, caller: Caller) -> bytes:
        """/v1/models as this caller sees it: only the models it may use."""
        if caller.models is None:
            return self.models_body
        body = self._models_bodies.get(caller.models)
        if body is None:
            cards = [self.card(model) for model in self.catalog.models() if model.public_name in caller.models]
            body = self._models_bodies[caller.models] = _encode(ModelList(cards))
        return body

    def targets(
        self, model: Model, endpoint: str, path: str, origin: str | None = None
    ) -> list[tuple[str, tuple[Target, ...]]]:
        """The targets a request for `model` on `endpoint` (at `path`) may try, in order: its own, then its
        fallbacks' (see routing.py), each only where its upstream serves the endpoint; 404 when none of the
        model's own does. `origin`: the upstream that created the response a request continues, its only
        target when it serves the model (no fallback knows that response)."""
        own = self._targets_serving(model.public_name, endpoint)
        if not own:
            raise EndpointNotSupported(model.public_name, path)
        pinned = [target for target in own if target.upstream.name == origin] if origin is not None else []
        if pinned:
            order = [(model.public_name, tuple(pinned))]
        else:
            order = [(model.public_name, own)]
            order += [(name, targets) for name in model.fallbacks if (targets := self._targets_serving(name, endpoint))]
        return order

    def _targets_serving(self, name: str, endpoint: str) -> tuple[Target, ...]:
        serving = self._serving.get((name, endpoint))
        if serving is None:  # a name passed through to an upstream as it is
            serving = _serving(self._targets_of(self.catalog.resolve(name)), endpoint)
        return serving

    def _targets_of(self, model: Model) -> tuple[Target, ...]:
        upstreams = self.pool.upstreams
        return tuple(
            Target(route, upstreams[route.upstream], weight)
            for route, weight in zip(model.routes, model.weights, strict=True)
        )

    def retired(self, successor: Generation) -> list[Upstream]:
        """This generation's upstreams that `successor` does not use: to close once they are idle."""
        kept: set[Any] = {id(upstream) for upstream in successor.pool.upstreams.values()}
        return [upstream for upstream in self.pool.upstreams.values() if id(upstream) not in kept]


def _serving(targets: tuple[Target, ...], endpoint: str) -> tuple[Target, ...]:
    return tuple(target for target in targets if endpoint in target.upstream.config.endpoints)
