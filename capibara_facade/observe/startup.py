"""The lines a person reads when the facade starts, whatever the log level: where it listens, with how many
workers, from which config, and what each upstream answered to a first probe (a warning naming the URL
when none answers, so a newcomer sees at once that the facade points at nothing)."""

from __future__ import annotations

import asyncio
import time

import httpx

from .. import __version__
from ..config import Config, UpstreamConfig
from ..config.checks import warnings as config_warnings

__all__ = ["startup_report"]


async def _probe(upstream: UpstreamConfig) -> tuple[bool, str]:
    """Whether the upstream answered its probe, and how ("HTTP 200 in 3 ms", "no answer (ConnectError)")."""
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=upstream.probe_timeout_seconds, trust_env=False) as client:
            response = await client.get(upstream.url + upstream.probe_path)
    except httpx.HTTPError as exc:
        return False, f"no answer ({type(exc).__name__})"
    return True, f"HTTP {response.status_code} in {(time.monotonic() - started) * 1000:.0f} ms"


async def _probe_all(config: Config) -> dict[str, tuple[bool, str]]:
    names = list(config.upstreams)
    results = await asyncio.gather(*(_probe(config.upstreams[name]) for name in names))
    return dict(zip(names, results, strict=True))


def startup_report(config: Config, source: str) -> list[str]:
    """The start-up lines; the upstreams are probed once, all at the same time."""
    server = config.server
    workers = f"{server.workers} worker{'s' if server.workers > 1 else ''}"
    lines = [f"capibara-facade {__version__} on http://{server.host}:{server.port} ({workers}), config: {source}"]
    results = asyncio.run(_probe_all(config))
    for name, (_, result) in results.items():
        upstream = config.upstreams[name]
        lines.append(f"  upstream {name}: {upstream.url}{upstream.probe_path} -> {result}")
    lines.extend(f"WARNING: {warning}" for warning in config_warnings(config))
    if not any(answered for answered, _ in results.values()):
        urls = ", ".join(upstream.url for upstream in config.upstreams.values())
        lines.append(f"WARNING: no upstream answers ({urls}); chat requests will fail with 502 until one does")
    return lines
