"""Picking the target that serves a request, and deciding whether a failed attempt may be retried.

A public model is served by one or more targets (an upstream and the model id it knows there, with a
weight). `Balancer.acquire()` picks one:

- only targets whose upstream's breaker lets requests through and that are below `max_in_flight`;
- among those, the power of two choices: two drawn at random in proportion to their weights, the one
  with fewer requests in flight per unit of weight wins (no global scan, no herd on one "least loaded");
- with affinity (`user` / `X-Session-ID`), the target that rendezvous hashing assigns to that key while it
  can take the request (a replica that keeps its prompt cache warm), else the choice above;
- when every usable target is full, the request waits in a bounded queue for at most
  `queue_timeout_seconds`; then, or when the queue itself is full, a 503 with `Retry-After`. Memory stays
  bounded: at most `max_queued` requests wait, each a future.

`release()` gives the slot back with the attempt's verdict, which feeds the upstream's breaker and wakes
the first waiter. `RetryBudget` caps retries at a share of recent requests, so a failing fleet is never
sent more than (1 + share) times its normal load.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import time
from collections.abc import Sequence

from ..catalog import Route
from ..config import RoutingConfig
from ..errors import UpstreamUnavailable
from .upstreams import Upstream

__all__ = ["Attempts", "Balancer", "RetryBudget", "Slot", "Target", "Verdict"]


class Target:
    __slots__ = ("route", "upstream", "weight")

    def __init__(self, route: Route, upstream: Upstream, weight: int) -> None:
        self.route = route
        self.upstream = upstream
        self.weight = weight

    def usable(self) -> bool:
        return self.upstream.breaker.available()

    def has_room(self) -> bool:
        limit = self.upstream.config.max_in_flight
        return limit is None or self.upstream.in_flight < limit

    def load(self) -> float:
        return self.upstream.in_flight / self.weight


class Slot:
    """One attempt's place at a target: its upstream's in-flight slot, and whether it is the breaker's trial."""

    __slots__ = ("target", "trial")

    def __init__(self, target: Target, trial: bool) -> None:
        self.target = target
        self.trial = trial


class Verdict:
    """How an attempt went, for the upstream's breaker."""

    SUCCESS = "success"  # the upstream answered (a 4xx is the client's problem, not the server's)
    FAILURE = "failure"  # connect error, timeout, 5xx, broken stream
    NONE = "none"  # no verdict: the client left first, or the facade refused the request


class Balancer:
    def __init__(self, config: RoutingConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        # Each waiter with the upstreams it could use: a freed slot wakes the longest waiter that can take it.
        self._waiters: collections.deque[tuple[asyncio.Future[None], frozenset[str]]] = collections.deque()

    async def acquire(self, targets: Sequence[Target], affinity_key: str | None, tried: set[Target]) -> Slot:
        """A target for one attempt, its upstream slot taken; 503 when none can take it in time."""
        deadline = time.monotonic() + self.config.queue_timeout_seconds
        while True:
            usable = [target for target in targets if target not in tried and target.usable()]
            if not usable:
                raise _unavailable("No upstream of this model is available right now.", targets)
            target = self._pick(usable, [target for target in usable if target.has_room()], affinity_key)
            if target is not None:
                trial = target.upstream.breaker.admit()
                target.upstream.begin()
                return Slot(target, trial)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self._waiters) >= self.config.max_queued:
                raise _unavailable("Every upstream of this model is busy; retry shortly.", targets, busy=True)
            waiter = asyncio.get_running_loop().create_future()
            entry = (waiter, frozenset(target.upstream.name for target in usable))
            self._waiters.append(entry)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.remove(entry)

    def release(self, slot: Slot, verdict: str) -> None:
        upstream = slot.target.upstream
        upstream.end()
        if verdict == Verdict.SUCCESS:
            upstream.breaker.succeeded(slot.trial)
        elif verdict == Verdict.FAILURE:
            upstream.breaker.failed(slot.trial)
        else:
            upstream.breaker.abandoned(slot.trial)
        # A slot is free on this upstream: the longest waiter that could use it looks again (one waiting for
        # another, still full upstream would only queue again, and the slot would go to nobody).
        woken = next((w for w, wanted in self._waiters if upstream.name in wanted and not w.done()), None)
        if woken is not None:
            woken.set_result(None)  # it leaves the queue itself, when it runs

    def _pick(self, usable: list[Target], candidates: list[Target], affinity_key: str | None) -> Target | None:
        """From the usable targets with room (`candidates`): the key's own target when it has room, else the
        power of two choices."""
        if not candidates:
            return None
        if affinity_key is not None:
            preferred = max(usable, key=lambda target: _rendezvous(affinity_key, target))
            if preferred in candidates:
                return preferred
            candidates = [target for target in candidates if target is not preferred] or candidates
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._two_by_weight(candidates)
        return first if first.load() <= second.load() else second

    def _two_by_weight(self, candidates: list[Target]) -> tuple[Target, Target]:
        weights = [target.weight for target in candidates]
        first = self._rng.choices(range(len(candidates)), weights)[0]
        others = [index for index in range(len(candidates)) if index != first]
        second = self._rng.choices(others, [weights[index] for index in others])[0]
        return candidates[first], candidates[second]


def _rendezvous(key: str, target: Target) -> bytes:
    """Highest-random-weight hashing: each key prefers one target, and keeps it while the set of targets
    changes around it (only keys of a target that leaves move)."""
    return hashlib.blake2b(f"{key}\0{target.upstream.name}".encode(), digest_size=8).digest()


def _unavailable(message: str, targets: Sequence[Target], busy: bool = False) -> UpstreamUnavailable:
    waits = [target.upstream.breaker.retry_after() for target in targets]
    retry_after = 1 if busy or not waits else max(1, round(min(waits)))
    return UpstreamUnavailable(message, retry_after=retry_after, failure="busy" if busy else "ejected")


class RetryBudget:
    """Retries allowed over a sliding window: at most `percent` of the first attempts seen in it (and always
    `minimum`, so a quiet facade can still retry). As in Envoy's and Finagle's retry budgets.

    Attempts are counted in slices of a thousandth of the window, so memory stays bounded (a thousand counters)
    however many requests arrive."""

    def __init__(self, percent: float, window_seconds: float, minimum: int) -> None:
        self._share = percent / 100
        self._window = window_seconds
        self._slice = window_seconds / 1000
        self._minimum = minimum
        self._attempts: collections.deque[list[float]] = collections.deque()  # [start of slice, count]
        self._attempt_count = 0
        self._retries: collections.deque[float] = collections.deque()  # at most the budget's worth

    def attempted(self) -> None:
        now = time.monotonic()
        if self._attempts and now - self._attempts[-1][0] < self._slice:
            self._attempts[-1][1] += 1
        else:
            self._attempts.append([now, 1])
        self._attempt_count += 1
        self._forget(now)

    def allow_retry(self) -> bool:
        now = time.monotonic()
        self._forget(now)
        if len(self._retries) >= max(self._minimum, self._share * self._attempt_count):
            return False
        self._retries.append(now)
        return True

    def _forget(self, now: float) -> None:
        """Drop what is older than the window."""
        while self._attempts and now - self._attempts[0][0] > self._window:
            self._attempt_count -= int(self._attempts.popleft()[1])
        while self._retries and now - self._retries[0] > self._window:
            self._retries.popleft()


class Attempts:
    """The targets one request may try, in order: its model's, then each fallback model's, each picked by the
    balancer; and whether a failed attempt may be tried again (only before the client got a byte)."""

    def __init__(
        self,
        balancer: Balancer,
        budget: RetryBudget,
        order: Sequence[tuple[str, Sequence[Target]]],
        affinity_key: str | None,
        max_attempts: int,
    ) -> None:
        self._balancer = balancer
        self._budget = budget
        self._order = list(order)  # (public name, its targets), the asked-for model first
        self._affinity_key = affinity_key
        self._left = max_attempts
        self._tried: set[Target] = set()
        budget.attempted()

    async def next(self) -> Slot:
        """The next target's slot; the last 503 when no model in the order can take the request."""
        failure: UpstreamUnavailable | None = None
        while self._order:
            _, targets = self._order[0]
            try:
                slot = await self._balancer.acquire(targets, self._affinity_key, self._tried)
            except UpstreamUnavailable as unavailable:
                failure = unavailable
                self._order.pop(0)  # none of this model's targets can: its fallback's may
                continue
            self._tried.add(slot.target)
            self._left -= 1
            return slot
        assert failure is not None
        raise failure

    def release(self, slot: Slot, verdict: str) -> None:
        self._balancer.release(slot, verdict)

    def may_retry(self) -> bool:
        """Whether another attempt may be made: attempts and the fleet's retry budget permitting."""
        return self._left > 0 and self._budget.allow_retry()
