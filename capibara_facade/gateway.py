"""The Gateway: everything a request needs, built once from the config and closed once at shutdown.

There is no module-level state in the facade; handlers reach the catalog, the upstream pool and the
accepted keys through the one `Gateway` that `create_app()` builds.
"""

from __future__ import annotations

import hmac

from .catalog import Catalog
from .config import Config
from .errors import AuthenticationFailed, OriginNotAllowed
from .upstreams import Pool

__all__ = ["Gateway"]


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.catalog = Catalog(config)
        self.pool = Pool(config)
        self._api_keys = tuple(key.encode() for key in config.auth.api_keys)
        origins = config.cors.allow_origins
        self._origins = None if "*" in origins else frozenset(origin.encode() for origin in origins)

    def admit_origin(self, origin: bytes | None) -> None:
        """Refuse a browser request from a site the CORS policy does not list, before any work is done.

        CORS alone only keeps such a site from reading the answer: a "simple" cross-site POST (text/plain,
        no preflight) would still run a generation. Clients other than browsers send no Origin."""
        if origin is not None and self._origins is not None and origin not in self._origins:
            raise OriginNotAllowed(f"Requests from the origin {origin.decode('latin-1')!r} are not allowed.")

    def authenticate(self, authorization: bytes | None) -> None:
        """Accept the request when no keys are configured, or when it carries one of them as a Bearer token."""
        if not self._api_keys:
            return
        scheme, _, token = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        # Compare against every key in constant time, so timing reveals neither key nor position.
        matched = False
        for key in self._api_keys:
            matched |= hmac.compare_digest(token.strip(), key)
        if not matched:
            raise AuthenticationFailed("Incorrect API key provided.")

    async def aclose(self) -> None:
        await self.pool.aclose()
