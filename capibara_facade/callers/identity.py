"""Who is calling: the caller a key belongs to, or the public tier, counted by client address.

The config holds SHA-256 digests of keys, never keys. A request's Bearer token is hashed and compared with
every configured digest in constant time (hmac.compare_digest, all of them, whatever matches), so timing
reveals neither a key nor which caller it belongs to.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from ..catalog import Model
from ..config import Config, QuotaConfig
from ..config.callers import hash_key
from ..errors import AuthenticationFailed, ModelNotAllowed, ModelNotFound
from .client_address import ClientAddress
from .rates import Limits

__all__ = ["PUBLIC", "Caller", "Callers"]

PUBLIC = "public"  # the caller name of requests without a key (a metric label and log field)


class Caller:
    """One request's caller. `limits` is None when it has none (then no limiter is consulted at all)."""

    __slots__ = ("limit_key", "limits", "max_tokens", "models", "name")

    def __init__(self, name: str, quota: QuotaConfig, limit_key: str) -> None:
        self.name = name
        self.limits = Limits.of(quota) if quota.limited else None
        self.limit_key = limit_key  # whose counters: "caller:<name>", or "public:<client address>"
        self.models = frozenset(quota.models) if quota.models else None  # None: every model
        self.max_tokens = quota.max_tokens

    def with_key(self, limit_key: str) -> Caller:
        clone = Caller.__new__(Caller)
        clone.name, clone.limits, clone.models, clone.max_tokens = self.name, self.limits, self.models, self.max_tokens
        clone.limit_key = limit_key
        return clone


class Callers:
    def __init__(self, config: Config) -> None:
        self._keys: list[tuple[bytes, Caller]] = [
            (bytes.fromhex(caller.key_sha256 or ""), Caller(name, caller, f"caller:{name}"))
            for name, caller in config.callers.items()
        ]
        # auth.api_keys, from before [callers]: unlimited callers named by position.
        for position, key in enumerate(config.auth.api_keys, 1):
            self._keys.append((bytes.fromhex(hash_key(key)), Caller(f"key-{position}", QuotaConfig(), "")))
        public = config.public
        self.public_enabled = public.enabled if public.enabled is not None else not self._keys
        self._public = Caller(PUBLIC, public, PUBLIC)
        self._address = ClientAddress(config.server.trusted_proxies, public.ipv6_prefix)
        self._hide_forbidden = config.auth.hide_forbidden_models
        self.names = [PUBLIC, *(caller.name for _, caller in self._keys)]

    def identify(
        self, authorization: bytes | None, peer: str | None, forwarded_for: bytes | None, real_ip: bytes | None
    ) -> Caller:
        """The request's caller; 401 for a wrong key, or for no key when the public tier is closed.

        With no keys configured every request is public, whatever key it carries (SDKs always send one)."""
        if not self._keys:
            return self._public_at(peer, forwarded_for, real_ip)
        scheme, _, token = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            if self.public_enabled:
                return self._public_at(peer, forwarded_for, real_ip)
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        digest = hashlib.sha256(token.strip()).digest()
        found: Caller | None = None
        for known, caller in self._keys:
            if hmac.compare_digest(digest, known):
                found = caller
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found

    def _public_at(self, peer: str | None, forwarded_for: bytes | None, real_ip: bytes | None) -> Caller:
        if self._public.limits is None:  # nothing is counted: the address is not even looked at
            return self._public
        return self._public.with_key(f"{PUBLIC}:{self._address.of(peer, forwarded_for, real_ip)}")

    def resolve(self, caller: Caller, find: Callable[[str], Model], name: str) -> Model:
        """The model `name` (looked up with `find`, the catalog's), if this caller may use it. A 404 lists only
        the models the caller may use: the catalog's own would name every model, the forbidden ones too."""
        try:
            model = find(name)
        except ModelNotFound:
            if caller.models is None:
                raise
            raise ModelNotFound(name, sorted(caller.models)) from None
        self.check_model(caller, model.public_name)
        return model

    def check_model(self, caller: Caller, model: str) -> None:
        """404 (or 403, see `auth.hide_forbidden_models`) for a model this caller may not use."""
        if caller.models is None or model in caller.models:
            return
        if self._hide_forbidden:
            raise ModelNotFound(model, sorted(caller.models))
        raise ModelNotAllowed(f"This key may not use the model {model!r}.", param="model")
