"""The limiter: admit a request against its caller's limits before it is forwarded, settle it afterwards.

With `[limits] redis_url`, every worker and replica shares its state in Redis (`redis_limiter.py`); without,
the state is this process's (`local_limiter.py`). A request never waits on Redis longer than
`redis_timeout_ms`: after a failure or a timeout, `on_redis_error` decides — "fail_open" limits in-process
(each process enforcing `fallback_share` of every limit) for `redis_retry_seconds`, then tries Redis again;
"fail_closed" answers 503. Either way `capibara_limiter_up` and /health say so.

A request's concurrency lease lives in the backend that admitted it. Redis leases expire after
`lease_seconds` unless renewed; `renew_leases()` runs for the gateway's lifetime and renews those of the
requests still in flight, so a long stream keeps its place and a crashed replica's places free themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable

from ..config import LimitsConfig
from ..errors import LimiterUnavailable, RateLimited
from .identity import Caller
from .local_limiter import LocalLimiter
from .rates import Decision, Limits, ratelimit_headers
from .redis_limiter import RedisLimiter
from .resp import RedisReplyError

__all__ = ["Admission", "Limiter"]

log = logging.getLogger(__name__)

_FAILURES = (RedisReplyError, OSError, TimeoutError)
_MAX_ORPHANS = 10_000  # leases of timed-out admits kept for release (each also expires on its own)


class Admission:
    """A request the limiter let through: what it reserved, where, and the headers its answer carries."""

    __slots__ = ("admitted_at", "caller", "headers", "lease", "limits", "prompt_estimate", "reserved", "shared")

    def __init__(self, caller: Caller, limits: Limits, reserved: int, prompt_estimate: int, lease: str) -> None:
        self.caller = caller
        self.limits = limits  # as enforced: the caller's own, or the fallback's share of them
        self.reserved = reserved
        self.prompt_estimate = prompt_estimate
        self.lease = lease
        self.admitted_at = time.time()
        self.shared = False  # admitted by Redis (else in this process)
        self.headers: list[tuple[bytes, bytes]] = []


class Limiter:
    def __init__(self, config: LimitsConfig, on_up: Callable[[bool], None] | None = None) -> None:
        self._config = config
        self._local = LocalLimiter()
        self._redis = (
            RedisLimiter(config.redis_url, config.redis_timeout_ms / 1000, config.key_prefix, config.lease_seconds)
            if config.redis_url
            else None
        )
        self._timeout = config.redis_timeout_ms / 1000
        self._retry_at = 0.0  # monotonic time before which Redis is not tried again
        self._on_up = on_up
        self.up = True
        self.last_error: str | None = None
        self._shared_leases: dict[str, str] = {}  # lease → caller key, of Redis-admitted requests in flight
        self._orphans: dict[str, tuple[str, Limits]] = {}  # lease → (key, limits) of admits that timed out
        self._releasing: set[asyncio.Task[None]] = set()  # their release, under way

    @property
    def backend(self) -> str:
        return "redis" if self._redis is not None else "local"

    async def admit(self, caller: Caller, reserve: int, prompt_estimate: int) -> Admission:
        """Let the request through, or raise RateLimited (429) / LimiterUnavailable (503, fail_closed)."""
        limits = caller.limits
        assert limits is not None
        lease = os.urandom(9).hex()
        decision: Decision | None = None
        if self._redis is not None and time.monotonic() >= self._retry_at:
            try:
                async with asyncio.timeout(self._timeout):
                    decision = await self._redis.admit(caller.limit_key, limits, reserve, lease, time.time())
            except _FAILURES as exc:
                self._failed(exc)
                if isinstance(exc, TimeoutError) and limits.max_concurrent and len(self._orphans) < _MAX_ORPHANS:
                    self._orphans[lease] = (caller.limit_key, limits)  # Redis may yet have run the admit
            else:
                self._answered()
                if self._orphans:
                    self._release_orphans()
        admission = Admission(caller, limits, reserve, prompt_estimate, lease)
        if decision is not None:
            admission.shared = True
        else:
            if self._redis is not None:
                if self._config.on_redis_error == "fail_closed":
                    raise LimiterUnavailable("Rate limits cannot be checked right now; retry shortly.")
                admission.limits = limits.share(self._config.fallback_share)
            decision = self._local.admit(caller.limit_key, admission.limits, reserve, lease)
        # Told as enforced: while Redis is away, this process's share of the limits.
        admission.headers = ratelimit_headers(admission.limits, decision)
        if not decision.allowed:
            final = admission.shared or self._redis is None  # a fallback's "too large" may pass once Redis is back
            raise _refusal(caller, admission.limits, decision, reserve, admission.headers, final=final)
        if admission.shared and limits.max_concurrent:
            self._shared_leases[lease] = caller.limit_key
        return admission

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        """Correct the reservation to what the request used, and end its lease."""
        delta = used_tokens - admission.reserved
        key = admission.caller.limit_key
        if not admission.shared:
            self._local.settle(key, admission.limits, delta, admission.lease, admission.admitted_at)
            return
        self._shared_leases.pop(admission.lease, None)
        if self._redis is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.settle(key, admission.limits, delta, admission.lease, admission.admitted_at)
        except _FAILURES as exc:  # its lease expires on its own; the tokens stay as reserved
            self._failed(exc)

    def _release_orphans(self) -> None:
        """End the leases that admits which timed out may have taken in Redis after all (their tokens stay
        reserved). Done once Redis answers again, so that a hung Redis is not asked more often for them."""
        redis, orphans = self._redis, self._orphans
        assert redis is not None
        self._orphans = {}

        async def release() -> None:
            with contextlib.suppress(*_FAILURES):
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    now = time.time()
                    await asyncio.gather(
                        *(redis.settle(key, limits, 0, lease, now) for lease, (key, limits) in orphans.items())
                    )

        task = asyncio.ensure_future(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def renew_leases(self) -> None:
        """For the gateway's lifetime: renew the Redis leases of requests in flight, three times a lease."""
        if self._redis is None:
            return
        while True:
            await asyncio.sleep(self._config.lease_seconds / 3)
            by_key: dict[str, list[str]] = {}
            for lease, key in list(self._shared_leases.items()):
                by_key.setdefault(key, []).append(lease)
            if by_key:
                try:
                    async with asyncio.timeout(max(self._timeout, 1.0)):
                        await self._redis.renew(by_key)
                except _FAILURES as exc:
                    self._failed(exc)

    def state(self) -> dict[str, object]:
        """For /health."""
        state: dict[str, object] = {"backend": self.backend, "up": self.up}
        if self._redis is not None:
            state["on_redis_error"] = self._config.on_redis_error
            state["error"] = self.last_error
        return state

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self._config.redis_retry_seconds
        self.last_error = type(exc).__name__  # /health shows only the kind: the message names Redis's address
        if self.up:
            log.error("rate-limit store unreachable (%s: %s); %s", self.last_error, exc, self._config.on_redis_error)
            self.up = False
            if self._on_up is not None:
                self._on_up(False)

    def _answered(self) -> None:
        if not self.up:
            log.warning("rate-limit store reachable again; shared limits resume")
            self.up = True
            self.last_error = None
            if self._on_up is not None:
                self._on_up(True)

    async def aclose(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(*_FAILURES):
                await self._redis.aclose()


def _refusal(
    caller: Caller, limits: Limits, decision: Decision, reserve: int, headers: list[tuple[bytes, bytes]], *, final: bool
) -> RateLimited:
    """The 429 for a refused request, worded as OpenAI words its own, with when to come back."""
    wait = max(decision.retry_after, 0.001)
    retry = [(b"retry-after", b"%d" % max(math.ceil(wait), 1)), (b"retry-after-ms", b"%d" % math.ceil(wait * 1000))]
    who = f"the key {caller.name!r}" if caller.name != "public" else "this address"
    if decision.reason == "daily":
        message = f"You exceeded the daily token budget of {limits.daily_tokens} for {who}; it renews at 00:00 UTC."
        return RateLimited(
            message,
            limit=decision.reason,
            type="insufficient_quota",
            code="insufficient_quota",
            extra_headers=retry + headers,
        )
    if decision.reason == "too_large":
        message = (
            f"Request too large for {who}: it may use up to {reserve} tokens (prompt and max_tokens), more than "
            f"the limit of {limits.tokens_per_minute} tokens per minute. Lower max_tokens or shorten the messages."
        )
        # It can never pass as it is: SDKs should not retry it (the openai SDK honours x-should-retry).
        never = [(b"x-should-retry", b"false"), *headers] if final else headers
        return RateLimited(
            message, limit=decision.reason, type="tokens", code="rate_limit_exceeded", extra_headers=never
        )
    if decision.reason == "concurrent":
        message = f"Too many requests in flight for {who}: the limit is {limits.max_concurrent} at once."
        kind = "requests"
    elif decision.reason == "tokens":
        message = (
            f"Rate limit reached for {who} on tokens per minute (TPM): Limit {limits.tokens_per_minute}, "
            f"Requested {reserve}. Please try again in {wait:.3g}s."
        )
        kind = "tokens"
    else:
        message = (
            f"Rate limit reached for {who} on requests per minute (RPM): Limit {limits.requests_per_minute}. "
            f"Please try again in {wait:.3g}s."
        )
        kind = "requests"
    return RateLimited(
        message, limit=decision.reason, type=kind, code="rate_limit_exceeded", extra_headers=retry + headers
    )
