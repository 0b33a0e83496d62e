"""The config of who may call and how much: caller keys, the public (anonymous) tier, and the limiter.

[callers.frontend-team]
key_sha256 = "…"            # `capibara-facade hash-key`; or key_env / key_file: a plain key, hashed at load
models = ["phi4_fast"]      # what it may use; empty: every model
requests_per_minute = 60
tokens_per_minute = 40000
max_concurrent = 4          # requests and streams in flight at once
daily_tokens = 2000000      # per UTC day

[public]                    # requests without a key, limited per client address
enabled = true
models = ["aya_expanse_multilingual"]
max_tokens = 400
requests_per_minute = 10

[limits]
redis_url = "redis://127.0.0.1:6379/0"   # empty: in-process limits (exact for one worker process)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from .base import Base, PositiveFloat, PositiveInt
from .errors import ConfigError

__all__ = ["CallerConfig", "LimitsConfig", "PublicConfig", "QuotaConfig", "hash_key", "resolve_keys"]

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class QuotaConfig(Base, frozen=True):
    """What a caller may use; every limit is off when left out."""

    # Public model names this caller may use (and sees in /v1/models). Empty: every model.
    models: tuple[str, ...] = ()
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    # Requests and streams in flight at once.
    max_concurrent: PositiveInt | None = None
    # Tokens per UTC day (prompt and completion).
    daily_tokens: PositiveInt | None = None
    # Ceiling for a request's max_tokens / max_completion_tokens (the lower of this and the model's wins).
    max_tokens: PositiveInt | None = None

    @property
    def limited(self) -> bool:
        return any(
            value is not None
            for value in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent, self.daily_tokens)
        )


class CallerConfig(QuotaConfig, frozen=True):
    """A client with its own key. The file holds the key's SHA-256, never the key; or the key comes from the
    environment (`key_env`) or a secrets file (`key_file`) and is hashed when the config loads."""

    key_sha256: str | None = None
    key_env: str | None = None
    key_file: str | None = None


class PublicConfig(QuotaConfig, frozen=True):
    """Requests that carry no key (the website's /api/chat); the limits apply per client address."""

    # None: open exactly when no caller keys are configured (the facade's behaviour before callers existed).
    enabled: bool | None = None
    # IPv6 clients are counted per network of this prefix length (one home or server gets a /64).
    ipv6_prefix: Annotated[int, msgspec.Meta(ge=1, le=128)] = 64


class LimitsConfig(Base, frozen=True):
    """Where the limits' state lives, and what happens when that place is gone."""

    # Every worker and replica shares one state in this Redis (one atomic script per check). Empty: in-process
    # state, exact for one worker process (check-config warns when server.workers > 1).
    redis_url: str | None = None
    # The longest a request waits on Redis; then `on_redis_error` decides.
    redis_timeout_ms: PositiveFloat = 50.0
    # "fail_open": limit in-process meanwhile (each process enforcing `fallback_share` of every limit); the
    # shared state resumes when Redis answers again. "fail_closed": answer 503 until it does.
    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open"
    fallback_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    # After a Redis failure, requests use the fallback for this long before Redis is tried again.
    redis_retry_seconds: PositiveFloat = 1.0
    # A concurrency lease expires this long after it was last renewed (a crashed replica's leases go away);
    # open requests renew theirs every third of it.
    lease_seconds: PositiveFloat = 30.0
    # Tokens reserved for the answer when neither the request nor a cap bounds it (settled to the real usage).
    default_reserve_tokens: PositiveInt = 1024
    # Prefix of every Redis key (several facades can share one Redis under different prefixes).
    key_prefix: str = "capibara"


def resolve_keys(callers: dict[str, CallerConfig], environ: Mapping[str, str]) -> dict[str, CallerConfig]:
    """Each caller with its key as a SHA-256 digest: a `key_env` or `key_file` key is read and hashed here,
    once, so nothing after loading holds a plain key. Raises ConfigError naming the caller and key."""
    resolved: dict[str, CallerConfig] = {}
    for name, caller in callers.items():
        where = f"callers.{name}"
        given = [key for key in ("key_sha256", "key_env", "key_file") if getattr(caller, key) is not None]
        if len(given) != 1:
            raise ConfigError(f"{where}: give exactly one of key_sha256, key_env, key_file (got {given or 'none'})")
        if caller.key_sha256 is not None:
            if not SHA256_HEX.fullmatch(caller.key_sha256):
                raise ConfigError(
                    f"{where}.key_sha256: must be 64 lower-case hex digits (capibara-facade hash-key prints it)"
                )
            resolved[name] = caller
            continue
        if caller.key_env is not None:
            plain = environ.get(caller.key_env, "").strip()
            if not plain:
                raise ConfigError(f"{where}.key_env: the environment variable {caller.key_env!r} is not set or empty")
        else:
            assert caller.key_file is not None
            try:
                plain = Path(caller.key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{where}.key_file: cannot read {caller.key_file!r}: {exc.strerror or exc}") from None
            if not plain:
                raise ConfigError(f"{where}.key_file: {caller.key_file!r} is empty")
        resolved[name] = msgspec.structs.replace(caller, key_sha256=hash_key(plain), key_env=None, key_file=None)
    return resolved


def hash_key(key: str) -> str:
    """The digest the config holds for `key` (what `capibara-facade hash-key` prints)."""
    return hashlib.sha256(key.encode()).hexdigest()
