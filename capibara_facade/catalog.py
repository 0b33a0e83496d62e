"""The catalog: which public model names exist, and where each one goes.

Built once from the config. `resolve(name)` turns the `model` a client sent into a `Model`: one `Route` per
target (the upstream to call, the model id it knows there, and what of the request body must change on
the way), their weights, the fallback models and the affinity. A name that is not configured is a 404
`model_not_found` listing what exists, unless the config passes unknown names through to one upstream
unchanged.
"""

from __future__ import annotations

import time

import msgspec

from .config import CompatConfig, Config, ModelConfig, TargetConfig
from .errors import ModelNotFound

__all__ = ["Catalog", "Model", "Route"]


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


class Model(msgspec.Struct, frozen=True):
    """A public model: the ways to serve it (one `Route` per target, with its weight) and what to try next."""

    public_name: str
    routes: tuple[Route, ...]
    weights: tuple[int, ...]
    fallbacks: tuple[str, ...] = ()
    affinity: str = "none"
    owned_by: str = "capibara-facade"


class Catalog:
    def __init__(self, config: Config, created: int | None = None) -> None:
        self._models = {model.name: _model(model, config) for model in config.models}
        self._passthrough_upstream = config.passthrough_unknown_models_to
        self._passthrough_compat = (
            config.upstreams[self._passthrough_upstream].compat if self._passthrough_upstream else CompatConfig()
        )
        # One fixed `created` for the lifetime of the process, reloads included: clients cache model lists.
        self.created = created or int(time.time())

    def resolve(self, name: str) -> Model:
        model = self._models.get(name)
        if model is not None:
            return model
        if self._passthrough_upstream is not None:
            route = Route(name, self._passthrough_upstream, name, compat=self._passthrough_compat)
            return Model(name, (route,), (1,))
        raise ModelNotFound(name, self.names())

    def get(self, name: str) -> Model:
        """A configured model by public name (never a pass-through); 404 when there is none."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name, self.names())
        return model

    def names(self) -> list[str]:
        return list(self._models)

    def models(self) -> list[Model]:
        return list(self._models.values())


def _model(model: ModelConfig, config: Config) -> Model:
    targets = model.all_targets()
    routes = tuple(_route(model, target, config.upstreams[target.upstream].compat) for target in targets)
    owned_by = model.owned_by or targets[0].upstream
    return Model(model.name, routes, tuple(t.weight for t in targets), model.fallbacks, model.affinity, owned_by)


def _route(model: ModelConfig, target: TargetConfig, compat: CompatConfig) -> Route:
    upstream_model = target.upstream_model or model.target
    return Route(
        public_name=model.name,
        upstream=target.upstream,
        upstream_model=upstream_model,
        rename_response=model.response_model == "alias" and upstream_model != model.name,
        defaults={key: msgspec.Raw(msgspec.json.encode(value)) for key, value in model.defaults.items()},
        max_tokens=model.max_tokens,
        stream_usage=model.stream_usage,
        owned_by=model.owned_by or target.upstream,
        compat=compat,
    )
