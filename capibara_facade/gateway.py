"""The Gateway: everything a request needs, built from the config, reloaded on SIGHUP, closed at shutdown.

There is no module-level state in the facade; handlers reach the current `Generation` (catalog, upstreams,
keys: what a reload can change), the balancer, the metrics and the request log through the one `Gateway`
that `create_app()` builds. `account()` is the last stage of every request: it reads the request's record
once, for every observer.

Reload: `reload()` reads the config again. A valid one becomes the next generation for new requests, while
requests and streams in flight finish on the one they started with; an invalid one, or one that changes what
only a restart can (the [server] section: listen address, workers, limits; CORS, metrics, request log, tracing,
and where the rate limits live),
is refused and the old config kept. Either way the result is logged, counted
(`capibara_config_reloads_total{result}`, `capibara_config_generation`) and shown in /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import msgspec

from .callers.identity import PUBLIC, Caller, Callers
from .callers.limiter import Admission, Limiter
from .callers.tokens import completion_bound
from .catalog import Model
from .chat_request import ChatRequest
from .config import Config, ConfigError, UpstreamConfig
from .generation import Generation
from .observe.metrics import Metrics
from .observe.record import RequestRecord
from .observe.request_log import RequestLog
from .observe.tracing import Tracing
from .store import Store, open_store
from .store.capture import Capture
from .store.recorder import Recorder
from .upstream.breaker import CLOSED
from .upstream.response_origins import ResponseOrigins
from .upstream.routing import Attempts, Balancer, RetryBudget, Target
from .upstream.upstreams import Upstream, UpstreamState

if TYPE_CHECKING:
    from .endpoints import Endpoint, RequestView

V = TypeVar("V", bound="RequestView")

__all__ = ["Gateway", "ReloadResult"]

log = logging.getLogger(__name__)

# What a reload cannot change: the listening socket and its limits, the processes, and the observers.
_RESTART_ONLY = ("server", "cors", "metrics", "request_log", "tracing", "limits", "store")


class ReloadResult(msgspec.Struct):
    result: str  # "ok", "invalid" (the file did not load), "refused" (it changes what needs a restart)
    generation: int
    error: str | None = None
    at: float | None = None  # Unix time


class Gateway:
    def __init__(self, config: Config, load: Callable[[], Config] | None = None) -> None:
        self._load = load  # reads the config again, for reload(); None: the config cannot be reloaded
        # Several workers share their metrics through files (the CLI sets up the directory before they start).
        shared_dir = config.metrics.multiprocess_dir if config.server.workers > 1 else None
        self.metrics = (
            Metrics([model.name for model in config.models], shared_dir, _caller_names(config))
            if config.metrics.enabled
            else None
        )
        self.request_log = RequestLog(config.request_log.path) if config.request_log.enabled else None
        self.tracing = Tracing(config.tracing) if config.tracing.enabled else None
        routing = config.routing
        self.balancer = Balancer(routing)
        self.retry_budget = RetryBudget(
            routing.retry_budget_percent, routing.retry_budget_window_seconds, routing.retry_budget_minimum
        )
        self.limiter = Limiter(config.limits, self.metrics.set_limiter_up if self.metrics is not None else None)
        self.response_origins = ResponseOrigins(routing.remembered_responses)  # per worker
        self.current = Generation(1, config, self._upstream)
        self.last_reload = ReloadResult("ok", 1)
        self._watching: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._retired: dict[asyncio.Task[None], Upstream] = {}  # closing once idle
        self.recorder: Recorder | None = None  # with [store] enabled, once `open_store` has opened it

    @property
    def config(self) -> Config:
        return self.current.config

    def _upstream(self, name: str, config: UpstreamConfig) -> Upstream:
        metrics = self.metrics
        if metrics is None:
            return Upstream(name, config)
        return Upstream(
            name, config, metrics.in_flight_gauge(name), lambda state: metrics.set_upstream_state(name, state)
        )

    def attempts(
        self, generation: Generation, order: list[tuple[str, tuple[Target, ...]]], affinity_key: str | None
    ) -> Attempts:
        """One request's attempts at the targets `order` lists (`Generation.targets`)."""
        return Attempts(self.balancer, self.retry_budget, order, affinity_key, generation.config.routing.max_attempts)

    def trace(self, record: RequestRecord, traceparent: bytes | None) -> None:
        """With tracing on, the request's span starts (a child of the client's `traceparent`)."""
        if self.tracing is not None:
            self.tracing.start(record, traceparent)

    async def limit(self, caller: Caller, endpoint: Endpoint[V], request: V, model: Model) -> Admission | None:
        """The caller's limits, before anything is forwarded: 429 when one is reached. The request's tokens
        are reserved here (its prompt, estimated, and the most its answer may use: nothing for an endpoint
        that generates no text) and settled by `account`."""
        if caller.limits is None:
            return None
        prompt = endpoint.estimate_prompt(request)
        reserve = prompt
        if endpoint.output_bounds is not None:
            caps = (caller.max_tokens, model.routes[0].max_tokens)
            default = self.config.limits.default_reserve_tokens
            per_choice = completion_bound(endpoint.output_bounds(request), caps, default)
            reserve += per_choice * endpoint.choices(request)
        return await self.limiter.admit(caller, reserve, prompt)

    @property
    def store(self) -> Store | None:
        return self.recorder.store if self.recorder is not None else None

    def capture(self, caller: Caller, model: Model, chat: ChatRequest, body: bytes) -> Capture | None:
        """What will store this chat completion, if it is to be stored: asked with `store: true`, or of a
        model or caller `[store]` lists (`store: false` included: the operator's record). Never a public
        caller's: everyone behind one address would share them."""
        if self.recorder is None or caller.name == PUBLIC:
            return None
        config = self.config.store
        if not (chat.store or model.public_name in config.models or caller.name in config.callers):
            return None
        return Capture(caller.name, chat.model, body, config.retention_days)

    async def account(self, record: RequestRecord) -> None:
        """The request is over: every observer reads its record, once; then the limiter settles its tokens
        (whatever an observer did: an unsettled request would hold its caller's place for good)."""
        try:
            if self.metrics is not None:
                self.metrics.observe(record)
            if self.request_log is not None:
                self.request_log.write(record)
            if self.tracing is not None:
                self.tracing.end(record)
            if record.capture is not None and self.recorder is not None:
                self.recorder.submit(record.capture, record)
        finally:
            if (admission := record.admission) is not None:
                used = record.tokens_used(admission.prompt_estimate, admission.reserved)
                await self.limiter.settle(admission, used)

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Around relaying one stream: counted in `capibara_open_streams` while it lasts."""
        if self.metrics is None:
            yield
            return
        self.metrics.open_streams.inc()
        try:
            yield
        finally:
            self.metrics.open_streams.dec()

    def reload(self) -> ReloadResult:
        """Read the config again and make it the next generation, or keep the current one (see the module)."""
        previous = self.current
        try:
            if self._load is None:
                raise ConfigError("this facade was started without a config to reload")
            config = self._load()
            for section in _RESTART_ONLY:
                old, new = getattr(previous.config, section), getattr(config, section)
                if old != new:
                    changed = _changed_keys(section, old, new)
                    raise _NeedsRestart(f"{changed} cannot change without a restart; restart the facade to apply it")
        except (ConfigError, _NeedsRestart) as exc:
            result = "refused" if isinstance(exc, _NeedsRestart) else "invalid"
            log.error("config reload %s, keeping generation %d: %s", result, previous.number, exc)
            self.last_reload = ReloadResult(result, previous.number, str(exc), round(time.time(), 3))
            self._count_reload(result)
            return self.last_reload
        self.current = Generation(previous.number + 1, config, self._upstream, previous)
        self.balancer.config = config.routing
        self.response_origins.capacity = config.routing.remembered_responses
        if self.metrics is not None:
            self.metrics.set_models(model.name for model in config.models)
            self.metrics.set_callers(_caller_names(config))
        for upstream in previous.retired(self.current):
            closing = asyncio.ensure_future(upstream.close_when_idle())
            self._retired[closing] = upstream
            closing.add_done_callback(self._retired.pop)
        self._watch()
        log.warning("config reloaded: generation %d", self.current.number)
        self.last_reload = ReloadResult("ok", self.current.number, None, round(time.time(), 3))
        self._count_reload("ok")
        return self.last_reload

    def _count_reload(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.reloaded(result, self.current.number)

    async def open_store(self) -> None:
        """With `[store]` enabled: open it (its schema migrated) and start writing completions to it."""
        config = self.config.store
        if not config.enabled:
            return
        on_failure = self.metrics.store_failed if self.metrics is not None else None
        self.recorder = Recorder(await open_store(config), config.queue_size, on_failure)
        self.recorder.start()

    def start(self) -> None:
        """Background work for the app's lifetime: with metrics on, the upstreams are probed continually."""
        if self.metrics is not None:
            self.metrics.reloaded(None, self.current.number)
            self.metrics.set_limiter_up(True)
        self._watch()
        self._renewing = asyncio.ensure_future(self.limiter.renew_leases())

    def _watch(self) -> None:
        if self.metrics is None:
            return
        if self._watching is not None:
            self._watching.cancel()
        for name in self.current.pool.upstreams:
            self.metrics.set_upstream_state(name, CLOSED)
        self._watching = asyncio.ensure_future(self.current.pool.watch(self._upstream_probed))

    def _upstream_probed(self, name: str, state: UpstreamState) -> None:
        if self.metrics is not None:
            self.metrics.set_upstream_up(name, bool(state.reachable))

    async def aclose(self) -> None:
        for task in (self._watching, self._renewing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.limiter.aclose()
        if self.recorder is not None:
            await self.recorder.aclose()
        for closing, upstream in list(self._retired.items()):
            closing.cancel()
            await upstream.aclose()
        await self.current.pool.aclose()
        if self.request_log is not None:
            self.request_log.close()
        if self.tracing is not None:
            self.tracing.aclose()


class _NeedsRestart(Exception):
    pass


def _changed_keys(section: str, old: msgspec.Struct, new: msgspec.Struct) -> str:
    """`section.key (old -> new)` for each key that differs."""
    old_values, new_values = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    changed = [key for key in old_values if old_values[key] != new_values[key]]

    def shown(key: str) -> str:  # a URL may carry a password, and the message goes to the log and /health
        if key.endswith(("url", "endpoint")):
            return f"{section}.{key} (changed)"
        return f"{section}.{key} ({old_values[key]!r} -> {new_values[key]!r})"

    return ", ".join(shown(key) for key in changed) or section


def _caller_names(config: Config) -> list[str]:
    """The `caller` label's values: the configured callers and "public" (bounded by the config)."""
    return Callers(config).names
