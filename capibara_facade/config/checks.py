"""The checks a config must pass beyond its types: URLs, names that refer to each other, limits that agree.

Each failure is a `ConfigError` whose message names the key and the value (never a secret: a URL with
credentials is refused without being shown).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .callers import hash_key
from .errors import ConfigError

if TYPE_CHECKING:
    from . import Config

__all__ = ["check", "warnings"]


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
    _check_callers(config, names)
    _check_store(config, names)
    for origin in config.cors.allow_origins:
        if origin != "*" and not urlsplit(origin).scheme:
            raise ConfigError(f"cors.allow_origins: {origin!r} is not an origin like https://example.com")


def warnings(config: Config) -> list[str]:
    """What is valid but probably not what the operator wants (shown by check-config and at start)."""
    found = []
    limited = config.public.limited or any(caller.limited for caller in config.callers.values())
    if limited and config.server.workers > 1 and config.limits.redis_url is None:
        found.append(
            f"server.workers is {config.server.workers} and limits.redis_url is not set: each worker keeps its own "
            f"limits, so a caller gets up to {config.server.workers}x its limits; set limits.redis_url to share them"
        )
    if config.public.limited and not config.server.trusted_proxies:
        found.append(
            "public limits apply per client address, and server.trusted_proxies is empty: behind a proxy every "
            "visitor has the proxy's address; list the proxy's address there"
        )
    return found


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


def _holder(name: str) -> str:
    return name if name.startswith("auth.") else f"callers.{name}"


_CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_store(config: Config, names: set[str]) -> None:
    """[store]: a Postgres URL, and the models and callers it names exist (a typo would store nothing)."""
    store = config.store
    if store.url is not None and urlsplit(store.url).scheme not in ("postgresql", "postgres"):
        raise ConfigError("store.url: must be a postgresql://user:password@host:port/database URL")
    for position, model in enumerate(store.models):
        if model not in names:
            raise ConfigError(f"store.models[{position}]: {model!r} is not a configured model name")
    for position, caller in enumerate(store.callers):
        if caller not in config.callers:
            raise ConfigError(f"store.callers[{position}]: {caller!r} is not a caller in [callers]")


def _check_callers(config: Config, names: set[str]) -> None:
    """Caller names (they become metric labels), their keys, the models they list, and the limiter's place."""
    digests: dict[str, str] = {}
    for name, caller in config.callers.items():
        if not _CALLER_NAME.fullmatch(name) or name == "public":
            raise ConfigError(
                f"callers.{name}: a caller's name is 1-64 letters, digits, '_', '.' or '-', and not 'public'"
            )
        assert caller.key_sha256 is not None  # resolve_keys() gave every caller one
        if caller.key_sha256 in digests:
            raise ConfigError(f"callers.{name}: has the same key as callers.{digests[caller.key_sha256]}")
        digests[caller.key_sha256] = name
    for position, key in enumerate(config.auth.api_keys):
        digest = hash_key(key)
        if digest in digests:  # the same key twice: which caller (and which limits) would it be?
            raise ConfigError(f"auth.api_keys[{position}]: is also the key of {_holder(digests[digest])}")
        digests[digest] = f"auth.api_keys[{position}]"
    if config.public.enabled is False and not digests:
        raise ConfigError("public.enabled: false needs at least one key in [callers] (or nobody could call)")
    quotas = [(f"callers.{name}", caller) for name, caller in config.callers.items()]
    for where, quota in [*quotas, ("public", config.public)]:
        for position, model in enumerate(quota.models):
            if model not in names:
                raise ConfigError(f"{where}.models[{position}]: {model!r} is not a configured model name")
    for position, proxy in enumerate(config.server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies[{position}]: {proxy!r} is not an address or network like 10.0.0.0/8"
            ) from None
    redis_url = config.limits.redis_url
    if redis_url is not None:
        # The URL itself is never shown: it may carry a password.
        parts = urlsplit(redis_url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("limits.redis_url: must be a redis://, rediss:// or unix:// URL")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError:
            raise ConfigError("limits.redis_url: has an invalid port") from None
        database = parts.path.lstrip("/") if parts.scheme != "unix" else ""
        if database and not database.isdigit():
            raise ConfigError("limits.redis_url: the path must be a database number, like redis://host:6379/0")
