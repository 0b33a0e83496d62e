"""A generation: everything a request needs that a config reload can change, built from one config:
the catalog, the upstreams and their targets, the callers and their keys, the allowed origins.

A request takes the gateway's current generation once, when it arrives, and uses only that one to the end,
so a reload never changes the rules under a request or a stream in flight. A new generation reuses the
previous one's `Upstream` for every upstream whose config is unchanged (its connections, breaker and
requests in flight carry over); the upstreams it no longer has are closed once their last request is over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from .callers.identity import Caller, Callers
from .catalog import Catalog, Model
from .config import Config, UpstreamConfig
from .errors import OriginNotAllowed
from .upstream.routing import Attempts, Balancer, RetryBudget, Target
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
        self._targets = {model.public_name: self._targets_of(model) for model in self.catalog.models()}
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

    def attempts(self, model: Model, affinity_key: str | None, balancer: Balancer, budget: RetryBudget) -> Attempts:
        """The targets a request for `model` may try: its own, then its fallbacks' (see routing.py)."""
        names = [model.public_name, *model.fallbacks]
        order = [(name, self._targets.get(name) or self._targets_of(self.catalog.resolve(name))) for name in names]
        return Attempts(balancer, budget, order, affinity_key, self.config.routing.max_attempts)

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
