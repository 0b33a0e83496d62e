"""Upstreams: one pooled `httpx.AsyncClient` per model server, and a cached health probe for each.

Clients are created when the app starts and closed when it stops (`Pool.aclose`). The probe runs on
demand, at most once per `probe_interval_seconds` however many /health or /ready calls arrive, so a
busy load balancer cannot turn health checks into load on the model server. /ready waits for a stale
probe; /health (liveness) never waits: it reports the last state and refreshes it in the background.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec

from .config import Config, UpstreamConfig
from .errors import UpstreamUnavailable
from .transport import AiohttpTransport

__all__ = ["Pool", "Upstream", "UpstreamState"]

USER_AGENT = "capibara-facade"


class UpstreamState(msgspec.Struct):
    reachable: bool | None = None  # None: not probed yet
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    checked_at: float | None = None  # Unix time of the probe


class Upstream:
    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.transport = AiohttpTransport(
            max_connections=config.max_connections, keepalive_expiry=config.keepalive_expiry_seconds
        )
        # The proxy path calls `transport` directly (see forward.py); the client serves the health probe.
        self.client = httpx.AsyncClient(
            transport=self.transport,
            # The transport logs nothing and follows no redirects; the client adds no cookies of its own.
            follow_redirects=False,
            trust_env=False,
        )
        self.chat_url = httpx.URL(config.url + "/v1/chat/completions")
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

    async def probe(self) -> UpstreamState:
        """The upstream's state, probed afresh when the last probe is older than the configured interval."""
        if time.monotonic() - self._probed_at < self.config.probe_interval_seconds:
            return self.state
        return await asyncio.shield(self._start_probe())

    def last_state(self) -> UpstreamState:
        """The state from the last probe, at once; a probe starts in the background when it is stale."""
        if time.monotonic() - self._probed_at >= self.config.probe_interval_seconds:
            self._start_probe()
        return self.state

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

    async def aclose(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
        await self.client.aclose()


class Pool:
    def __init__(self, config: Config) -> None:
        self.upstreams = {name: Upstream(name, upstream) for name, upstream in config.upstreams.items()}

    def pick(self, name: str) -> Upstream:
        upstream = self.upstreams.get(name)
        if upstream is None:  # config validation makes this unreachable; kept as a clear error, not a KeyError
            raise UpstreamUnavailable(f"No upstream named {name!r} is configured.")
        return upstream

    def last_states(self) -> dict[str, UpstreamState]:
        return {name: upstream.last_state() for name, upstream in self.upstreams.items()}

    async def probe_all(self) -> dict[str, UpstreamState]:
        states = await asyncio.gather(*(upstream.probe() for upstream in self.upstreams.values()))
        return dict(zip(self.upstreams, states, strict=True))

    async def aclose(self) -> None:
        await asyncio.gather(*(upstream.aclose() for upstream in self.upstreams.values()))
