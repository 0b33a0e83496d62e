"""A circuit breaker per upstream: passive health from the answers real requests get.

    closed ──N consecutive failures──▶ open ──cooldown──▶ half_open ──success──▶ closed
                                        ▲                     │
                                        └──────failure────────┘   (cooldown doubles, up to a ceiling)

A failure is what a healthy server does not do: a connect error, a timeout, a 5xx. While open the upstream
takes no requests; after the cooldown exactly one request is let through (half-open), and its outcome
decides. The cooldown grows on every failed trial, so a server that keeps failing is tried ever more rarely,
and starts over once it recovers. The clock is `time.monotonic()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "STATES", "Breaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class Breaker:
    __slots__ = (
        "_cooldown",
        "_failures",
        "_opened_at",
        "_trial",
        "base_cooldown",
        "max_cooldown",
        "on_change",
        "state",
        "threshold",
    )

    def __init__(
        self, threshold: int, cooldown: float, max_cooldown: float, on_change: Callable[[str], None] | None = None
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.state = CLOSED
        self._failures = 0
        self._cooldown = cooldown
        self._opened_at = 0.0
        self._trial = False  # the one half-open request is in flight
        self.on_change = on_change  # told each new state (for the metrics)

    def available(self) -> bool:
        """Whether a request may be sent now (without taking the half-open trial)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and time.monotonic() - self._opened_at >= self._cooldown:
            self._become(HALF_OPEN)
        return self.state == HALF_OPEN and not self._trial

    def admit(self) -> bool:
        """A request is being sent; whether it is the half-open trial (whose outcome alone then decides)."""
        if self.state == HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def abandoned(self, trial: bool = True) -> None:
        """A request ended with no verdict (the client left first): if it was the trial, the next request is."""
        if trial:
            self._trial = False

    def succeeded(self, trial: bool = True) -> None:
        if self.state != CLOSED and not trial:
            return  # an answer to a request sent before the upstream was ejected says nothing of it now
        if self.state != CLOSED:
            self._become(CLOSED)
        self._failures = 0
        self._cooldown = self.base_cooldown
        self._trial = False

    def failed(self, trial: bool = True) -> None:
        if self.state == HALF_OPEN and trial:  # the trial failed: open again, for longer
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            self._open()
            return
        if self.state != CLOSED:
            return  # a request from before the ejection failing: the breaker knows already
        self._failures += 1
        if self._failures >= self.threshold:
            self._open()

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when it would now)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._cooldown - (time.monotonic() - self._opened_at))

    def _open(self) -> None:
        self._become(OPEN)
        self._opened_at = time.monotonic()
        self._trial = False

    def _become(self, state: str) -> None:
        self.state = state
        if self.on_change is not None:
            self.on_change(state)
