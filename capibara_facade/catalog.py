"""The catalog: which public model names exist, and where each one goes.

Built once from the config. `resolve(name)` turns the `model` a client sent into a `Route`: the upstream
to call, the model id it knows, and what of the request body must change on the way. A name that is not
configured is a 404 `model_not_found` listing what exists, unless the config passes unknown names
through to one upstream unchanged.
"""

from __future__ import annotations

import time

import msgspec

from .config import CompatConfig, Config, ModelConfig
from .errors import ModelNotFound

__all__ = ["Catalog", "Route"]


class Route(msgspec.Struct, frozen=True):
    public_name: str
    upstream: str
    upstream_model: str
    # Rewrite `model` in responses back to `public_name`.
    rename_response: bool = False
    # Fields (already JSON-encoded) to add when the client leaves them out.
    defaults: dict[str, msgspec.Raw] = {}
    max_tokens: int | None = None
    stream_usage: bool = True
    owned_by: str = "capibara-facade"
    compat: CompatConfig = CompatConfig()

    @property
    def rewrites_request(self) -> bool:
        """Whether every body must be re-encoded; when not, the client's bytes go upstream untouched unless
        the request itself needs a fix (see `wire.upstream_body`)."""
        return self.upstream_model != self.public_name or bool(self.defaults) or self.max_tokens is not None


class Catalog:
    def __init__(self, config: Config) -> None:
        self._routes = {model.name: _route(model, config.upstreams[model.upstream].compat) for model in config.models}
        self._passthrough_upstream = config.passthrough_unknown_models_to
        self._passthrough_compat = (
            config.upstreams[self._passthrough_upstream].compat if self._passthrough_upstream else CompatConfig()
        )
        # One fixed `created` for the lifetime of the process: clients cache model lists.
        self.created = int(time.time())

    def resolve(self, name: str) -> Route:
        route = self._routes.get(name)
        if route is not None:
            return route
        if self._passthrough_upstream is not None:
            return Route(name, self._passthrough_upstream, name, compat=self._passthrough_compat)
        raise ModelNotFound(name, self.names())

    def get(self, name: str) -> Route:
        """A configured model by public name (never a pass-through); 404 when there is none."""
        route = self._routes.get(name)
        if route is None:
            raise ModelNotFound(name, self.names())
        return route

    def names(self) -> list[str]:
        return list(self._routes)

    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def upstream_names(self) -> set[str]:
        names = {route.upstream for route in self._routes.values()}
        if self._passthrough_upstream is not None:
            names.add(self._passthrough_upstream)
        return names


def _route(model: ModelConfig, compat: CompatConfig) -> Route:
    return Route(
        public_name=model.name,
        upstream=model.upstream,
        upstream_model=model.target,
        rename_response=model.response_model == "alias" and model.target != model.name,
        defaults={key: msgspec.Raw(msgspec.json.encode(value)) for key, value in model.defaults.items()},
        max_tokens=model.max_tokens,
        stream_usage=model.stream_usage,
        owned_by=model.owned_by or model.upstream,
        compat=compat,
    )
