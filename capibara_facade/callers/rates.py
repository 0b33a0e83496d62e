"""The limits a caller has, the verdict of one check, and how both are told to the client.

The rate limits are GCRA (the generic cell rate algorithm, as in redis-cell): each limit keeps one number,
the "theoretical arrival time" (TAT) at which its bucket would be full again. A request of cost c moves it
c * (60 s / limit) into the future and is allowed while that stays within 60 s of now. So a caller may
spend a whole minute's allowance at once, then gets it back continuously — what OpenAI's
`x-ratelimit-reset-*` headers describe — with O(1) state, no window boundary to burst across, and an exact
Retry-After. The daily token budget is a plain counter per UTC day; concurrency is a set of leases.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import msgspec

from ..config import QuotaConfig

__all__ = ["PERIOD", "Decision", "Limits", "ratelimit_headers"]

PERIOD = 60.0  # seconds: the "per minute" of requests_per_minute and tokens_per_minute


class Limits(msgspec.Struct, frozen=True):
    """One caller's limits; 0 is "no limit"."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0
    daily_tokens: int = 0

    @classmethod
    def of(cls, quota: QuotaConfig) -> Limits:
        return cls(
            quota.requests_per_minute or 0,
            quota.tokens_per_minute or 0,
            quota.max_concurrent or 0,
            quota.daily_tokens or 0,
        )

    def share(self, fraction: float) -> Limits:
        """These limits scaled down, at least 1 each (what one process enforces while Redis is away)."""
        if fraction >= 1:
            return self
        return Limits(
            *(max(1, math.floor(value * fraction)) if value else 0 for value in msgspec.structs.astuple(self))
        )


class Decision(NamedTuple):
    """The verdict of one check. `reason` names the limit that refused ("" when allowed): "concurrent",
    "requests", "tokens", "too_large" (more tokens than a whole minute's allowance), or "daily"."""

    allowed: bool
    reason: str = ""
    retry_after: float = 0.0  # seconds until the request could pass
    requests_remaining: int = 0
    requests_reset: float = 0.0  # seconds until the requests bucket is full again
    tokens_remaining: int = 0
    tokens_reset: float = 0.0


def ratelimit_headers(limits: Limits, decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's `x-ratelimit-*` headers for the limits the caller has (requests and tokens per minute)."""
    headers: list[tuple[bytes, bytes]] = []
    if limits.requests_per_minute:
        headers += [
            (b"x-ratelimit-limit-requests", b"%d" % limits.requests_per_minute),
            (b"x-ratelimit-remaining-requests", b"%d" % decision.requests_remaining),
            (b"x-ratelimit-reset-requests", _duration(decision.requests_reset)),
        ]
    if limits.tokens_per_minute:
        headers += [
            (b"x-ratelimit-limit-tokens", b"%d" % limits.tokens_per_minute),
            (b"x-ratelimit-remaining-tokens", b"%d" % decision.tokens_remaining),
            (b"x-ratelimit-reset-tokens", _duration(decision.tokens_reset)),
        ]
    return headers


def _duration(seconds: float) -> bytes:
    """A duration the way OpenAI writes one: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return b"%dms" % math.ceil(seconds * 1000)
    if seconds < 60:
        return b"%gs" % round(seconds, 3)
    minutes, rest = divmod(math.ceil(seconds), 60)  # whole seconds first: 119.5 s is "2m0s", not "1m60s"
    return b"%dm%ds" % (minutes, rest)
