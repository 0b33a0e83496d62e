"""`capibara-facade healthcheck`: one GET to the facade's /health (or /ready), turned into an exit status.

For probes that run a command rather than speak HTTP: Docker's HEALTHCHECK (the slim image has no curl) and
Kubernetes exec probes. Exit 0 when the facade answered 2xx; otherwise 1, with one line on stderr saying why,
which Docker keeps in `docker inspect`'s health log. Docker reserves exit status 2, so a config that cannot be
read is a 1 here too, unlike `serve`.

Without --url the address is the one `serve` listens on, from the same config file and CAPIBARA_* variables,
so the probe follows a changed port without being edited.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit

from .config import Config, ConfigError, load_config

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "add_healthcheck_options", "default_url", "probe", "run_healthcheck"]

HEALTHY, UNHEALTHY = 0, 1
DEFAULT_TIMEOUT_SECONDS = 2.0  # under Docker's and Kubernetes' probe timeouts, so the reason gets reported
# A listener on every address is reached on loopback from inside its own host or container.
_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1"}
_MAX_BODY_BYTES = 64 * 1024  # /ready names every upstream; nothing larger is a health answer


def add_healthcheck_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file to find the address in (default: $CAPIBARA_CONFIG)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="check this URL instead of the configured address's /health")
    target.add_argument("--ready", action="store_true", help="check /ready (503 while no upstream answers)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds to connect and to answer (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )


def run_healthcheck(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = args.url
    if url is None:
        try:
            config = load_config(args.config or environ.get("CAPIBARA_CONFIG"), environ)
        except ConfigError as exc:
            print(f"capibara-facade healthcheck: configuration error: {exc}", file=sys.stderr)
            return UNHEALTHY
        url = default_url(config, "/ready" if args.ready else "/health")
    reason = probe(url, args.timeout)
    if reason is None:
        return HEALTHY
    print(f"capibara-facade healthcheck: {reason}", file=sys.stderr)
    return UNHEALTHY


def default_url(config: Config, path: str) -> str:
    """Where `serve` with this config answers, as seen from its own host or container."""
    host = _LOOPBACK_FOR.get(config.server.host, config.server.host)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}{path}"


def probe(url: str, timeout: float) -> str | None:
    """Why the facade at `url` is not healthy, or None when it answered 2xx.

    http.client rather than urllib: urllib would send the probe to an HTTP_PROXY from the environment, and
    would follow a redirect to wherever it points."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return f"{url}: not an http:// URL"
    try:
        port = parts.port or 80
    except ValueError:
        return f"{url}: invalid port"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    try:
        connection.request("GET", target, headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read(_MAX_BODY_BYTES)
    except ConnectionRefusedError:
        return f"{url}: connection refused (nothing listens on port {port})"
    except TimeoutError:
        return f"{url}: no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return f"{url}: {exc or type(exc).__name__}"
    finally:
        connection.close()
    if 200 <= response.status < 300:
        return None
    return f"{url}: HTTP {response.status} {response.reason}{_reported_status(body)}"


def _reported_status(body: bytes) -> str:
    """The facade's own word for its state (`"status": "unavailable"`), when the body has one."""
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return ""
    return f" (status: {status})" if isinstance(status, str) else ""
