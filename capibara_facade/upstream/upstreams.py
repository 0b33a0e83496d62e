"""Upstreams: one pooled `httpx.AsyncClient` per model server, and a cached health probe for each.

Clients are created when the app starts and closed when it stops (`Pool.aclose`). The probe runs on
demand, at most once per `probe_interval_seconds` however many /health or /ready calls arrive, so a
busy load balancer cannot turn health checks into load on the model server. /ready waits for a stale
probe; /health (liveness) never waits: it reports the last state and refreshes it in the background.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from ..config import UpstreamConfig
from .breaker import Breaker
from .transport import AiohttpTransport

__all__ = ["Pool", "Upstream", "UpstreamState"]

USER_AGENT = "capibara-facade"


class UpstreamState(msgspec.Struct):
    reachable: bool | None = None  # None: not probed yet
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    checked_at: float | None = None  # Unix time of the probe
    breaker: str = "closed"  # passive health from real requests: closed, open (ejected), half_open
    in_flight: int = 0


class _NoGauge:
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class Upstream:
    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        in_flight_gauge: Any = None,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.in_flight = 0  # requests sent and not yet answered in full (streams: until closed)
        self._in_flight_gauge = in_flight_gauge or _NoGauge()
        self.breaker = Breaker(
            config.eject_after_failures, config.eject_cooldown_seconds, config.eject_max_cooldown_seconds, on_state
        )
        self.transport = AiohttpTransport(
            max_connections=config.max_connections, keepalive_expiry=config.keepalive_expiry_seconds
        )
        # The proxy path calls `transport` directly (see forward.py). The health probe has a connection of its
        # own, so a chat pool at its limit cannot make /ready report the upstream down.
        self.client = httpx.AsyncClient(
            transport=AiohttpTransport(max_connections=2, keepalive_expiry=config.keepalive_expiry_seconds),
            # The transport logs nothing and follows no redirects; the client adds no cookies of its own.
            follow_redirects=False,
            trust_env=False,
        )
        self.chat_url = httpx.URL(config.url + "/v1/chat/completions")
        self._urls = {"/v1/chat/completions": self.chat_url}  # by endpoint path: parsed once each
        self.models_url = httpx.URL(config.url + "/v1/models")
        self.probe_url = httpx.URL(config.url + config.probe_path)
        # Sent with every request. Naming accept, accept-encoding and user-agent ourselves also keeps aiohttp
        # from adding its own (gzip would make the upstream compress, and buffer, what we pass through).
        headers = {"user-agent": USER_AGENT, "accept": "*/*", "accept-encoding": "identity"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self.headers = headers
        self.raw_headers = [(name.encode(), value.encode()) for name, value in headers.items()]
        self.timeout = httpx.Timeout(
            connect=config.connect_timeout_seconds,
            read=config.read_timeout_seconds,
            write=config.read_timeout_seconds,
            pool=config.connect_timeout_seconds,
        )
        self.stream_timeout = httpx.Timeout(
            connect=config.connect_timeout_seconds,
            read=config.stream_read_timeout_seconds,
            write=config.read_timeout_seconds,
            pool=config.connect_timeout_seconds,
        )
        self.state = UpstreamState()
        self._probing: asyncio.Task[UpstreamState] | None = None
        self._probed_at = -float("inf")  # monotonic

    def url(self, path: str) -> httpx.URL:
        """The URL of an endpoint (`path`: one of the few the facade relays) on this upstream."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.config.url + path)
        return url

    def begin(self) -> None:
        """A request to this upstream starts; `end()` when its answer is complete or abandoned."""
        self.in_flight += 1
        self._in_flight_gauge.inc()

    def end(self) -> None:
        self.in_flight -= 1
        self._in_flight_gauge.dec()

    async def probe(self) -> UpstreamState:
        """The upstream's state, probed afresh when the last probe is older than the configured interval."""
        if time.monotonic() - self._probed_at < self.config.probe_interval_seconds:
            return self._now()
        await self.refresh()
        return self._now()

    def _now(self) -> UpstreamState:
        """The last probe's result with the breaker's state and the requests in flight as they are now."""
        self.breaker.available()  # an open breaker whose cooldown is over reports half_open
        return msgspec.structs.replace(self.state, breaker=self.breaker.state, in_flight=self.in_flight)

    async def refresh(self) -> UpstreamState:
        """The upstream's state, probed now (joining a probe already under way)."""
        return await asyncio.shield(self._start_probe())

    def last_state(self) -> UpstreamState:
        """The state from the last probe, at once; a probe starts in the background when it is stale."""
        if time.monotonic() - self._probed_at >= self.config.probe_interval_seconds:
            self._start_probe()
        return self._now()

    def _start_probe(self) -> asyncio.Task[UpstreamState]:
        if self._probing is None:  # one probe at a time, however many callers
            self._probing = asyncio.ensure_future(self._probe())
            self._probing.add_done_callback(lambda _: setattr(self, "_probing", None))
        return self._probing

    async def _probe(self) -> UpstreamState:
        started = time.monotonic()
        try:
            response = await self.client.get(
                self.probe_url, headers=self.headers, timeout=self.config.probe_timeout_seconds
            )
        except httpx.HTTPError as exc:
            self.state = UpstreamState(False, None, None, type(exc).__name__, time.time())
        else:
            latency = round((time.monotonic() - started) * 1000, 2)
            reachable = response.status_code < 500
            error = None if response.is_success else f"HTTP {response.status_code}"
            self.state = UpstreamState(reachable, response.status_code, latency, error, round(time.time(), 3))
        self._probed_at = time.monotonic()
        return self.state

    async def close_when_idle(self) -> None:
        """Close once the last request in flight is over (a reload retired this upstream)."""
        while self.in_flight:  # noqa: ASYNC110 - polled: an Event per request would cost every request
            await asyncio.sleep(0.25)
        await self.aclose()

    async def aclose(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
        await self.client.aclose()
        await self.transport.aclose()


class Pool:
    """A generation's upstreams by name (see generation.py)."""

    def __init__(self, upstreams: dict[str, Upstream]) -> None:
        self.upstreams = upstreams

    def last_states(self) -> dict[str, UpstreamState]:
        return {name: upstream.last_state() for name, upstream in self.upstreams.items()}

    async def probe_all(self) -> dict[str, UpstreamState]:
        states = await asyncio.gather(*(upstream.probe() for upstream in self.upstreams.values()))
        return dict(zip(self.upstreams, states, strict=True))

    async def watch(self, on_state: Callable[[str, UpstreamState], None]) -> None:
        """Probe every upstream in the background, each at its own interval, reporting each result (so the
        `capibara_upstream_up` gauge is current whether or not anybody asks /health)."""

        async def watch_one(upstream: Upstream) -> None:
            while True:
                on_state(upstream.name, await upstream.refresh())
                await asyncio.sleep(upstream.config.probe_interval_seconds)

        await asyncio.gather(*(watch_one(upstream) for upstream in self.upstreams.values()))

    async def aclose(self) -> None:
        await asyncio.gather(*(upstream.aclose() for upstream in self.upstreams.values()))
