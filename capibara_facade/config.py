"""Configuration: one TOML file decoded into frozen msgspec Structs, plus environment overrides.

Everything the facade does is decided here, once, at start-up. `load_config()` either returns a valid
`Config` or raises `ConfigError` with a message that names the bad key and value; nothing is read from
the environment anywhere else.

Environment overrides (applied on top of the file, before validation):

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

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "AuthConfig",
    "CompatConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "LegacyChatConfig",
    "ModelConfig",
    "ServerConfig",
    "UpstreamConfig",
    "load_config",
]

MODELS_EUROPE_IDS = (
    "aya_expanse_multilingual",
    "phi4_fast",
    "mistral_balanced",
    "qwen_coder",
    "gemma3_multimodal",
)

T = TypeVar("T")
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the value."""


class Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Policy for every config section: immutable, and a misspelt key is an error, not a silent default."""


class ServerConfig(Base, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    # uvicorn worker processes sharing the listening socket.
    workers: PositiveInt = 1
    # Requests with a larger body are refused with 413 before they are read further.
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    # On SIGTERM: stop accepting, give in-flight requests and streams this long to finish.
    shutdown_grace_seconds: Annotated[int, msgspec.Meta(ge=0)] = 30
    # Idle client connections stay open this long; keep it above the proxy's own upstream keep-alive (nginx: 60 s)
    # so the proxy never reuses a connection the facade is closing.
    keepalive_timeout_seconds: PositiveInt = 75
    # --- Limits for a server that faces the internet with nothing in front (a container, a Kubernetes
    # Service); nginx's matching settings are in README "Server limits". Enforced in `server_limits.py`.
    # Request line (method + URL + version) longer than this: 414.
    max_url_bytes: PositiveInt = 8192
    # Request head (request line + every header) larger than this: 431.
    max_header_bytes: PositiveInt = 65536
    # A request head must be complete this long after its first byte arrived: otherwise 408 and close.
    header_timeout_seconds: PositiveFloat = 10.0
    # Longest silence while a request body is arriving, and the slowest average rate a body may arrive at
    # (measured once the body has taken longer than body_timeout_seconds): otherwise 408 and close.
    body_timeout_seconds: PositiveFloat = 10.0
    body_min_bytes_per_second: Annotated[int, msgspec.Meta(ge=0)] = 1024
    # Client connections open at once; a new one above the cap is closed at once (logged once per burst).
    max_connections: PositiveInt = 2048
    # JSON nesting deeper than this in a request body: 400 (a chat request needs well under 20).
    max_json_depth: PositiveInt = 64
    # An upstream SSE event larger than this ends the stream with an error event (memory stays bounded).
    max_sse_event_bytes: PositiveInt = 1024 * 1024
    # uvicorn's access log costs ~20% CPU per request; off unless asked for.
    access_log: bool = False
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"


class CompatConfig(Base, frozen=True):
    """Request fixes for upstreams that deviate from OpenAI's API; each changes the body only when needed."""

    # Servers that know only `max_tokens` (llama.cpp's Python server) ignore `max_completion_tokens`, which
    # LangChain and newer SDKs send, and generate until the context is full: mirror it into `max_tokens`.
    max_tokens_from_max_completion_tokens: bool = False
    # llama.cpp's Python server answers 500 to an assistant turn with `"content": null` and `tool_calls` (what
    # every tool loop sends back): send `""` instead.
    empty_content_for_tool_calls: bool = False


class UpstreamConfig(Base, frozen=True):
    # Base URL that `/v1/chat/completions` and `/v1/models` are appended to, e.g. http://10.0.0.5:8082.
    url: str = "http://127.0.0.1:8082"
    # Sent upstream as `Authorization: Bearer <api_key>`; the client's own key is never forwarded.
    api_key: str | None = None
    # Appended to `url` by the health probe. llama.cpp's Python server has no /health: use /v1/models.
    probe_path: str = "/health"
    probe_interval_seconds: PositiveFloat = 5.0
    probe_timeout_seconds: PositiveFloat = 2.0
    connect_timeout_seconds: PositiveFloat = 5.0
    # Longest silence from the upstream while waiting for (or reading) a non-streaming answer.
    read_timeout_seconds: PositiveFloat = 300.0
    # Longest gap between two streamed chunks (reasoning models can think silently for a while).
    stream_read_timeout_seconds: PositiveFloat = 600.0
    # Pool size: the most concurrent requests in flight to this upstream. httpx's default (100) would
    # silently queue everything above it.
    max_connections: PositiveInt = 1024
    # Idle keep-alive connections are closed after this long: keep it below the upstream's own idle timeout
    # (uvicorn-based servers, llama.cpp's among them: 5 s), or a request may meet a connection being closed.
    keepalive_expiry_seconds: PositiveFloat = 4.0
    compat: CompatConfig = CompatConfig()


class ModelConfig(Base, frozen=True):
    # The public name clients send as `model` and see in /v1/models.
    name: str
    # Key of the upstream in [upstreams].
    upstream: str = "default"
    # The model id the upstream knows; defaults to `name`.
    upstream_model: str | None = None
    # Which `model` the client sees in responses: the upstream's bytes untouched ("upstream"), or the
    # public name it asked for ("alias": every response and stream chunk is rewritten).
    response_model: Literal["upstream", "alias"] = "upstream"
    # Fields set when the client leaves them out, e.g. {temperature = 0.3}.
    defaults: dict[str, Any] = {}
    # Ceiling for max_tokens / max_completion_tokens; also applied when the client sends neither.
    max_tokens: PositiveInt | None = None
    # Ask the upstream for the final usage chunk on every stream (`stream_options.include_usage`), so the
    # facade knows what each stream cost. The client gets that chunk only when it asked for it, as from
    # OpenAI. Turn off only for a server that refuses `stream_options`.
    stream_usage: bool = True
    owned_by: str | None = None

    @property
    def target(self) -> str:
        return self.upstream_model or self.name


class LegacyChatConfig(Base, frozen=True):
    """Defaults of the frontend's POST /api/chat contract."""

    model: str = "aya_expanse_multilingual"
    temperature: float = 0.7
    max_tokens: PositiveInt = 200
    system: str | None = None


class CorsConfig(Base, frozen=True):
    allow_origins: tuple[str, ...] = (
        "https://www.capibara6.com",
        "https://capibara6.com",
        "http://localhost:3000",
        "http://localhost:5173",
        "http://localhost:8080",
        "http://127.0.0.1:3000",
        "http://127.0.0.1:5173",
        "http://127.0.0.1:8080",
    )
    max_age_seconds: Annotated[int, msgspec.Meta(ge=0)] = 600


class AuthConfig(Base, frozen=True):
    # Bearer keys accepted from clients. Empty: the facade is open (the frontend sends no key today).
    api_keys: tuple[str, ...] = ()


def _default_models() -> tuple[ModelConfig, ...]:
    served = [ModelConfig(name=model_id, owned_by="models-europe") for model_id in MODELS_EUROPE_IDS]
    friendly = ModelConfig(name="capibara6", upstream_model="aya_expanse_multilingual", owned_by="capibara6")
    return (*served, friendly)


class Config(Base, frozen=True):
    server: ServerConfig = ServerConfig()
    upstreams: dict[str, UpstreamConfig] = msgspec.field(default_factory=lambda: {"default": UpstreamConfig()})
    models: tuple[ModelConfig, ...] = msgspec.field(default_factory=_default_models)
    # Forward a model name that is not configured to this upstream as-is, instead of answering 404.
    passthrough_unknown_models_to: str | None = None
    legacy_chat: LegacyChatConfig = LegacyChatConfig()
    cors: CorsConfig = CorsConfig()
    auth: AuthConfig = AuthConfig()


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (or nothing: the built-in defaults), apply `environ` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    source = str(path) if path is not None else "built-in defaults"
    if _apply_environment(raw, environ or {}):
        source += " + CAPIBARA_* environment / command-line options"
    try:
        # Upstreams one by one first: msgspec names a dict entry `[...]`, and the name is what an operator needs.
        for name, table in raw.get("upstreams", {}).items():
            _convert(table, UpstreamConfig, f"upstreams.{name}")
        config = _convert(raw, Config, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _validate(config)
    return config


def _convert(raw: Any, kind: type[T], where: str) -> T:
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `int`, got `str` - at `$.server.port`": lead with the key, add the value.
        message, _, at = str(exc).partition(" - at `$")
        at = at.rstrip("`")
        key = f"{where}{at}".lstrip(".") or "(top level)"
        value = _value_at(raw, at)
        shown = f" (got {value!r})" if value is not _MISSING else ""
        raise ConfigError(f"{key}: {message}{shown}") from None


_MISSING = object()


def _value_at(raw: Any, path: str) -> Any:
    """The value at a msgspec error path like `.models[1].name`, or _MISSING."""
    node = raw
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        key, index = part
        try:
            node = node[key] if key else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node if path else _MISSING


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> bool:
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


def _validate(config: Config) -> None:
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
    if not config.upstreams:
        raise ConfigError("upstreams: at least one upstream is required")
    seen: set[str] = set()
    for index, model in enumerate(config.models):
        where = f"models[{index}]"
        if not model.name:
            raise ConfigError(f"{where}.name: must not be empty")
        if model.name in seen:
            raise ConfigError(f"{where}.name: duplicate model name {model.name!r}")
        seen.add(model.name)
        if model.upstream not in config.upstreams:
            known = ", ".join(sorted(config.upstreams))
            raise ConfigError(f"{where}.upstream: {model.upstream!r} is not a configured upstream ({known})")
        for key in model.defaults:
            if key in ("model", "messages", "stream"):
                raise ConfigError(f"{where}.defaults.{key}: {key!r} cannot have a default")
    target = config.passthrough_unknown_models_to
    if target is not None and target not in config.upstreams:
        raise ConfigError(f"passthrough_unknown_models_to: {target!r} is not a configured upstream")
    if config.models and config.legacy_chat.model not in seen and target is None:
        raise ConfigError(f"legacy_chat.model: {config.legacy_chat.model!r} is not a configured model name")
    for index, model in enumerate(config.models):
        if model.max_tokens is not None:
            for key in ("max_tokens", "max_completion_tokens"):
                default = model.defaults.get(key)
                if isinstance(default, int) and default > model.max_tokens:
                    cap = model.max_tokens
                    raise ConfigError(f"models[{index}].defaults.{key}: {default} is above the max_tokens cap {cap}")
    for origin in config.cors.allow_origins:
        if origin != "*" and not urlsplit(origin).scheme:
            raise ConfigError(f"cors.allow_origins: {origin!r} is not an origin like https://example.com")
