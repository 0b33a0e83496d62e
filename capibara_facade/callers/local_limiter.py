"""The limits kept in this process's memory: exact for one worker process, and the fallback while Redis is
away. The same algorithm as `redis_limiter.py`'s scripts (see `rates.py`), on this process's clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .rates import PERIOD, Decision, Limits

__all__ = ["LocalLimiter"]

_DAY = 86400
_SWEEP_EVERY = 4096  # admissions between sweeps of state that has expired (memory stays bounded)
_SLACK = 1e-3  # seconds: float rounding of the bucket times (Unix time, ~1e-7 s a step) must not refuse a burst's last


class LocalLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # Unix time: the daily budget's day is a UTC day
        self._tats: dict[str, float] = {}  # "<key> r" / "<key> t": when that bucket is full again
        self._daily: dict[str, tuple[int, int]] = {}  # key → (UTC day number, tokens used that day)
        self._leases: dict[str, set[str]] = {}  # key → the leases of its requests in flight
        self._admitted = 0

    def admit(self, key: str, limits: Limits, cost: int, lease: str) -> Decision:
        """Check every limit; only if all pass, take the request (and its `cost` in tokens) from each. The
        remaining/reset figures are after this request when it passes, as they stand when it does not."""
        now = self._clock()
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        requests_at = max(self._tats.get(key + " r", now), now)
        tokens_at = max(self._tats.get(key + " t", now), now)
        requests_next = requests_at + PERIOD / rpm if rpm else requests_at
        tokens_next = tokens_at + cost * PERIOD / tpm if tpm else tokens_at
        day = int(now // _DAY)
        used_day, used = self._daily.get(key, (day, 0))
        used = used if used_day == day else 0
        held = self._leases.get(key)
        reason, retry = "", 0.0
        if limits.max_concurrent and held is not None and len(held) >= limits.max_concurrent:
            reason, retry = "concurrent", 1.0
        elif rpm and requests_next - now > PERIOD + _SLACK:
            reason, retry = "requests", requests_next - PERIOD - now
        elif tpm and cost > tpm:
            reason = "too_large"
        elif tpm and tokens_next - now > PERIOD + _SLACK:
            reason, retry = "tokens", tokens_next - PERIOD - now
        elif limits.daily_tokens and used + cost > limits.daily_tokens:
            reason, retry = "daily", (day + 1) * _DAY - now
        if not reason:
            requests_at, tokens_at = requests_next, tokens_next
            if rpm:
                self._tats[key + " r"] = requests_at
            if tpm:
                self._tats[key + " t"] = tokens_at
            if limits.daily_tokens:
                self._daily[key] = (day, used + cost)
            if limits.max_concurrent:
                self._leases.setdefault(key, set()).add(lease)
            self._admitted += 1
            if self._admitted % _SWEEP_EVERY == 0:
                self._sweep(now)
        return Decision(
            not reason,
            reason,
            retry,
            _remaining(requests_at - now, rpm),
            requests_at - now,
            _remaining(tokens_at - now, tpm),
            tokens_at - now,
        )

    def settle(self, key: str, limits: Limits, delta: int, lease: str, admitted_at: float | None = None) -> None:
        """The request is over: correct its token reservation by `delta` (used minus reserved), end its lease.
        The daily budget is corrected only if it is still the day the request was admitted on."""
        if delta and (tpm := limits.tokens_per_minute):
            now = self._clock()
            # A bucket that refilled while the request ran is full: charge from now (in Redis its key expired).
            tokens_at = max(self._tats.get(key + " t", now), now)
            self._tats[key + " t"] = max(tokens_at + delta * PERIOD / tpm, now)
        if delta and limits.daily_tokens and key in self._daily:
            day, used = self._daily[key]
            admitted_day = int((admitted_at if admitted_at is not None else self._clock()) // _DAY)
            if day == admitted_day:
                self._daily[key] = (day, max(used + delta, 0))
        held = self._leases.get(key)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._leases[key]

    def _sweep(self, now: float) -> None:
        """Forget buckets that are full again and budgets of past days: they mean the same as no entry."""
        self._tats = {name: at for name, at in self._tats.items() if at > now}
        today = int(now // _DAY)
        self._daily = {key: spent for key, spent in self._daily.items() if spent[0] == today}


def _remaining(ahead: float, per_minute: int) -> int:
    """How many more units fit in the bucket, `ahead` seconds of it being taken (0 when there is no limit)."""
    if not per_minute:
        return 0
    return max(math.floor((PERIOD - ahead) * per_minute / PERIOD + 1e-3), 0)
