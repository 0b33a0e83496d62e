"""Configuration: one TOML file decoded into frozen msgspec Structs, plus environment overrides.

Everything the facade does is decided here, once, at start-up. `load_config()` either returns a valid
`Config` or raises `ConfigError` with a message that names the bad key and value; nothing is read from
the environment anywhere else.

The file's tables are laid under the CAPIBARA_* environment overrides (`config_environment.py`), decoded
here, then checked (`config_checks.py`): URLs, names that refer to each other, limits that agree.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from .base import Base, Port, PositiveFloat, PositiveInt
from .callers import CallerConfig, LimitsConfig, PublicConfig, QuotaConfig, resolve_keys
from .checks import check
from .environment import apply_environment
from .errors import ConfigError
from .store import StoreConfig

__all__ = [
    "AuthConfig",
    "CallerConfig",
    "CompatConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "Endpoint",
    "LegacyChatConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ModelConfig",
    "PublicConfig",
    "QuotaConfig",
    "RequestLogConfig",
    "RoutingConfig",
    "ServerConfig",
    "StoreConfig",
    "TargetConfig",
    "TracingConfig",
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
Endpoint = Literal["chat", "completions", "embeddings", "responses"]


class ServerConfig(Base, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    # uvicorn worker processes sharing the listening socket.
    workers: PositiveInt = 1
    # Requests with a larger body are refused with 413 before they are read further.
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    # On SIGTERM: stop accepting, give in-flight requests and streams this long to finish.
    shutdown_grace_seconds: Annotated[int, msgspec.Meta(ge=0)] = 30
    # Idle client connections stay open this long (between requests, and a new one that sends nothing); keep it
    # above the proxy's own upstream keep-alive (nginx: 60 s) so the proxy never reuses a connection being closed.
    keepalive_timeout_seconds: PositiveInt = 75
    # --- Limits for a server that faces the internet with nothing in front (a container, a Kubernetes
    # Service); nginx's matching settings are in README "Server limits". Enforced in `server_limits.py`.
    # Request URL (path and query) longer than this: 414.
    max_url_bytes: PositiveInt = 8192
    # Request head (the URL and every header line) larger than this: 431, as soon as that many bytes arrived.
    max_header_bytes: PositiveInt = 65536
    # A request head must be complete this long after its first byte arrived: otherwise 408 and close.
    header_timeout_seconds: PositiveFloat = 10.0
    # Longest silence while a request body is arriving, and the slowest average rate a body may arrive at
    # (measured once the body has taken longer than body_timeout_seconds): otherwise 408 and close.
    body_timeout_seconds: PositiveFloat = 10.0
    body_min_bytes_per_second: Annotated[int, msgspec.Meta(ge=0)] = 1024
    # Client connections open at once, per worker process; a new one above the cap gets 503 and is closed (a
    # warning at the first, then at most once a minute). The open-files limit is raised to fit it at start.
    max_connections: PositiveInt = 2048
    # JSON nesting deeper than this in a request body: 400 (a chat request needs well under 20).
    max_json_depth: PositiveInt = 64
    # An upstream SSE event larger than this ends the stream with an error event (memory stays bounded).
    max_sse_event_bytes: PositiveInt = 1024 * 1024
    # Peers whose X-Forwarded-For / X-Real-IP is believed (addresses or networks: nginx's, a load balancer's).
    # From anyone else those headers are ignored, so a client cannot choose the address it is limited by.
    trusted_proxies: tuple[str, ...] = ()
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
    # `store` and `metadata` are the facade's business (it stores the completion itself): removed from a
    # request that has them. vLLM and llama.cpp ignore both; an upstream that would store the completion a
    # second time, or act on `metadata`, is what this is for. False: they go upstream as the client sent them.
    strip_store: bool = True


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
    # Requests in flight to this upstream at most; more wait in the queue ([routing]). Empty: no limit.
    max_in_flight: PositiveInt | None = None
    # Passive health: after this many consecutive failures (connect errors, timeouts, 5xx) the upstream is
    # ejected for the cooldown; then one request is let through, and the cooldown doubles (up to the ceiling)
    # each time that trial fails.
    eject_after_failures: PositiveInt = 5
    eject_cooldown_seconds: PositiveFloat = 5.0
    eject_max_cooldown_seconds: PositiveFloat = 60.0
    # The OpenAI endpoints this server serves: "chat" (/v1/chat/completions), "completions" (/v1/completions),
    # "embeddings" (/v1/embeddings), "responses" (/v1/responses). A request for another endpoint never reaches
    # it: a model none of whose targets serves the endpoint is a 404 endpoint_not_supported. Default: chat
    # only, what models-europe serves; vLLM serves all four, llama.cpp's server all but responses.
    endpoints: Annotated[tuple[Endpoint, ...], msgspec.Meta(min_length=1)] = ("chat",)
    compat: CompatConfig = CompatConfig()


class TargetConfig(Base, frozen=True):
    """One model server that serves a public model: the upstream, the model id it knows, a share of traffic."""

    upstream: str
    # Default: the model's upstream_model, else its name.
    upstream_model: str | None = None
    weight: PositiveInt = 1


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
    # Several model servers behind this name (replicas, regions); when set, `upstream` is not used.
    targets: tuple[TargetConfig, ...] = ()
    # Public models tried, in order, when none of this one's targets can take the request.
    fallbacks: tuple[str, ...] = ()
    # Prefer the same target for the same `user` field or X-Session-ID header (prompt-cache reuse on vLLM
    # and llama.cpp), falling back to the least loaded when that one is full or ejected.
    affinity: Literal["none", "user", "session"] = "none"

    @property
    def target(self) -> str:
        return self.upstream_model or self.name

    def all_targets(self) -> tuple[TargetConfig, ...]:
        """Every target, the single-upstream form included, each with its model id filled in."""
        configured = self.targets or (TargetConfig(upstream=self.upstream),)
        return tuple(
            TargetConfig(upstream=t.upstream, upstream_model=t.upstream_model or self.target, weight=t.weight)
            for t in configured
        )


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


class RoutingConfig(Base, frozen=True):
    """Waiting for a free upstream, and retrying a failed attempt (only before the client got a byte)."""

    # When every target of a model is at its max_in_flight, a request waits this long, then gets 503.
    queue_timeout_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # Requests waiting at once, at most; more get 503 at once (memory stays bounded).
    max_queued: PositiveInt = 1024
    # Attempts per request, the first included. A retry goes to another target when there is one, after a
    # connect error, a 502/503/504, or a 429 whose Retry-After is at most max_retry_after_seconds. A read
    # timeout of a whole answer is never retried: the upstream may still be generating it (twice the GPU work).
    max_attempts: PositiveInt = 3
    max_retry_after_seconds: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    # Retries over the last retry_budget_window_seconds are capped at this share of first attempts (and
    # always allowed up to retry_budget_minimum), so a failing fleet never gets amplified load.
    retry_budget_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 20.0
    retry_budget_window_seconds: PositiveFloat = 10.0
    retry_budget_minimum: Annotated[int, msgspec.Meta(ge=0)] = 5
    # A Responses API request with `previous_response_id` goes to the upstream that created that response
    # (vLLM keeps responses in memory, per replica). Each worker remembers this many response ids, the
    # newest; an id it does not know (older, or created through another worker) is routed as usual.
    remembered_responses: PositiveInt = 10000


class MetricsConfig(Base, frozen=True):
    # GET /metrics in Prometheus text format, on the facade's own port (nginx's site does not route it).
    enabled: bool = True
    # Where workers keep their values when server.workers > 1 (prometheus-client's multiprocess mode). Empty:
    # a fresh temporary directory per start. Under systemd, RuntimeDirectory= gives a good one.
    multiprocess_dir: str | None = None


class RequestLogConfig(Base, frozen=True):
    # One JSON line per finished request: ids, model, upstream, status, timings, tokens, outcome; no contents.
    enabled: bool = True
    # A file to append to; empty: standard output.
    path: str | None = None


class TracingConfig(Base, frozen=True):
    # OpenTelemetry traces, one span per chat request (needs the `otel` extra: pip install 'capibara-facade[otel]').
    enabled: bool = False
    # "otlp": OTLP over HTTP to `endpoint` (a collector, Jaeger, Tempo...); "file": one JSON span a line to `path`.
    exporter: Literal["otlp", "file"] = "otlp"
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    path: str | None = None
    service_name: str = "capibara-facade"


class AuthConfig(Base, frozen=True):
    # Plain Bearer keys, each an unlimited caller named key-1, key-2, ... (kept from before [callers]; prefer
    # [callers], whose file holds only hashes). With keys and no [public] tier, every request needs a key.
    api_keys: tuple[str, ...] = ()
    # A model a caller may not use: 404 model_not_found, as if it did not exist (what OpenAI answers, and what
    # its /v1/models shows), or 403 model_not_allowed (clearer to a developer, but confirms the model exists).
    hide_forbidden_models: bool = True


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
    callers: dict[str, CallerConfig] = {}
    public: PublicConfig = PublicConfig()
    limits: LimitsConfig = LimitsConfig()
    routing: RoutingConfig = RoutingConfig()
    metrics: MetricsConfig = MetricsConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    tracing: TracingConfig = TracingConfig()
    store: StoreConfig = StoreConfig()


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
    if apply_environment(raw, environ or {}):
        source += " + CAPIBARA_* environment / command-line options"
    try:
        # Upstreams and callers one by one first: msgspec names a dict entry `[...]`, and the name is what an
        # operator needs.
        for name, table in raw.get("upstreams", {}).items():
            _convert(table, UpstreamConfig, f"upstreams.{name}")
        for name, table in raw.get("callers", {}).items():
            _convert(table, CallerConfig, f"callers.{name}")
        config = _convert(raw, Config, "")
        config = msgspec.structs.replace(config, callers=resolve_keys(config.callers, environ or {}))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    check(config)
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
