"""Environment overrides: CAPIBARA_* variables laid over the config file's tables before validation.

CAPIBARA_CONFIG                 path of the TOML file (used by the CLI when --config is absent)
CAPIBARA_HOST, CAPIBARA_PORT    server.host, server.port
CAPIBARA_WORKERS                server.workers
CAPIBARA_UPSTREAM_URL           url of the default upstream (the only one, or the one named `default`)
CAPIBARA_API_KEYS               auth.api_keys, comma separated
CAPIBARA__SECTION__KEY          any scalar key, e.g. CAPIBARA__SERVER__MAX_BODY_BYTES=1048576 or
                                CAPIBARA__UPSTREAMS__MODELS_EUROPE__URL=http://10.0.0.5:8082
                                (values are parsed as TOML scalars, falling back to plain strings)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["apply_environment"]


def apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> bool:
    """Apply the CAPIBARA_* overrides in `environ` to `raw`; whether there were any."""
    applied = False
    shortcuts = {
        "CAPIBARA_HOST": ("server", "host"),
        "CAPIBARA_PORT": ("server", "port"),
        "CAPIBARA_WORKERS": ("server", "workers"),
    }
    for variable, (section, key) in shortcuts.items():
        if variable in environ:
            applied = _set(raw, (section, key), environ[variable])
    if "CAPIBARA_UPSTREAM_URL" in environ:
        upstreams = raw.setdefault("upstreams", {"default": {}})
        if "default" in upstreams or len(upstreams) == 1:
            name = "default" if "default" in upstreams else next(iter(upstreams))
        else:
            names = ", ".join(sorted(upstreams))
            raise ConfigError(
                f"CAPIBARA_UPSTREAM_URL: there are several upstreams ({names}) and none is named 'default'; "
                "set CAPIBARA__UPSTREAMS__<NAME>__URL instead"
            )
        applied = _set(raw, ("upstreams", name, "url"), environ["CAPIBARA_UPSTREAM_URL"])
    if "CAPIBARA_API_KEYS" in environ:
        keys = [key.strip() for key in environ["CAPIBARA_API_KEYS"].split(",") if key.strip()]
        applied = _set(raw, ("auth", "api_keys"), keys)
    for variable, value in environ.items():
        if variable.startswith("CAPIBARA__"):
            path = tuple(part.lower() for part in variable.removeprefix("CAPIBARA__").split("__"))
            if len(path) >= 2 and path[0] == "upstreams":
                path = ("upstreams", _upstream_key(raw, path[1]), *path[2:])
            applied = _set(raw, path, _value(value))
    return applied


def _upstream_key(raw: dict[str, Any], env_name: str) -> str:
    """Environment names are upper-case with underscores; find the configured upstream they mean."""
    for name in raw.get("upstreams", {}):
        if name.lower().replace("-", "_") == env_name:
            return str(name)
    return env_name


def _set(raw: dict[str, Any], keys: tuple[str, ...], value: Any) -> bool:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment override {'.'.join(keys)}: {key!r} is not a table")
        node = child
    node[keys[-1]] = value
    return True


def _value(text: str) -> Any:
    """An environment value: a TOML array or inline table when it looks like one, else the string itself
    (converted to the key's type at validation, so an API key of digits stays a string)."""
    if text.startswith(("[", "{")):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    return text
