"""The checks a config must pass beyond its types: URLs, names that refer to each other, limits that agree.

Each failure is a `ConfigError` whose message names the key and the value (never a secret: a URL with
credentials is refused without being shown).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import ConfigError

if TYPE_CHECKING:
    from . import Config

__all__ = ["check"]


def check(config: Config) -> None:
    _check_upstreams(config)
    names = _check_models(config)
    passthrough = config.passthrough_unknown_models_to
    if passthrough is not None and passthrough not in config.upstreams:
        raise ConfigError(f"passthrough_unknown_models_to: {passthrough!r} is not a configured upstream")
    if config.models and config.legacy_chat.model not in names and passthrough is None:
        raise ConfigError(f"legacy_chat.model: {config.legacy_chat.model!r} is not a configured model name")
    tracing = config.tracing
    if tracing.enabled and importlib.util.find_spec("opentelemetry.sdk") is None:
        raise ConfigError("tracing.enabled: true needs OpenTelemetry: pip install 'capibara-facade[otel]'")
    if tracing.enabled and tracing.exporter == "file" and not tracing.path:
        raise ConfigError("tracing.path: the file exporter needs a path")
    for origin in config.cors.allow_origins:
        if origin != "*" and not urlsplit(origin).scheme:
            raise ConfigError(f"cors.allow_origins: {origin!r} is not an origin like https://example.com")


def _check_upstreams(config: Config) -> None:
    if not config.upstreams:
        raise ConfigError("upstreams: at least one upstream is required")
    for name, upstream in config.upstreams.items():
        parts = urlsplit(upstream.url)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ConfigError(f"upstreams.{name}.url: {upstream.url!r} has an invalid port") from None
        if parts.username is not None or parts.password is not None:  # the URL itself is not shown: it has a secret
            raise ConfigError(
                f"upstreams.{name}.url: must not carry credentials (user:password@); use upstreams.{name}.api_key"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstreams.{name}.url: {upstream.url!r} is not an http(s) URL")
        if upstream.url.endswith("/"):
            raise ConfigError(f"upstreams.{name}.url: {upstream.url!r} must not end with '/'")
        if not upstream.probe_path.startswith("/"):
            raise ConfigError(f"upstreams.{name}.probe_path: {upstream.probe_path!r} must start with '/'")


def _check_models(config: Config) -> set[str]:
    """The models' own keys, and what they refer to; returns the public names."""
    known = ", ".join(sorted(config.upstreams))
    names: set[str] = set()
    for index, model in enumerate(config.models):
        where = f"models[{index}]"
        if not model.name:
            raise ConfigError(f"{where}.name: must not be empty")
        if model.name in names:
            raise ConfigError(f"{where}.name: duplicate model name {model.name!r}")
        names.add(model.name)
        if model.targets and model.upstream != "default":
            raise ConfigError(
                f"{where}.upstream: {model.upstream!r} is not used with targets; give each target its upstream"
            )
        if not model.targets and model.upstream not in config.upstreams:
            raise ConfigError(f"{where}.upstream: {model.upstream!r} is not a configured upstream ({known})")
        for position, served in enumerate(model.targets):
            if served.upstream not in config.upstreams:
                raise ConfigError(
                    f"{where}.targets[{position}].upstream: {served.upstream!r} is not a configured upstream ({known})"
                )
        for key in model.defaults:
            if key in ("model", "messages", "stream"):
                raise ConfigError(f"{where}.defaults.{key}: {key!r} cannot have a default")
        for key in ("max_tokens", "max_completion_tokens"):
            default = model.defaults.get(key)
            if model.max_tokens is not None and isinstance(default, int) and default > model.max_tokens:
                cap = model.max_tokens
                raise ConfigError(f"{where}.defaults.{key}: {default} is above the max_tokens cap {cap}")
    for index, model in enumerate(config.models):
        for position, fallback in enumerate(model.fallbacks):
            if fallback not in names or fallback == model.name:
                what = "is the model itself" if fallback == model.name else "is not a configured model name"
                raise ConfigError(f"models[{index}].fallbacks[{position}]: {fallback!r} {what}")
    return names
