"""A generation: everything a request needs that a config reload can change, built from one config.

A request takes the gateway's current generation once, when it arrives, and uses only that one to the end,
so a reload never changes the rules under a request or a stream in flight. A new generation reuses the
previous one's `Upstream` for every upstream whose config is unchanged (its connections, breaker and
requests in flight carry over); the upstreams it no longer has are closed once their last request is over.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import msgspec

from .catalog import Catalog, Model
from .config import Config, UpstreamConfig
from .errors import AuthenticationFailed, OriginNotAllowed
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
        self._api_keys = tuple(key.encode() for key in config.auth.api_keys)
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

    def authenticate(self, authorization: bytes | None) -> None:
        """Accept the request when no keys are configured, or when it carries one of them as a Bearer token."""
        if not self._api_keys:
            return
        scheme, _, token = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        # Compare against every key in constant time, so timing reveals neither key nor position.
        matched = False
        for key in self._api_keys:
            matched |= hmac.compare_digest(token.strip(), key)
        if not matched:
            raise AuthenticationFailed("Incorrect API key provided.")

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
