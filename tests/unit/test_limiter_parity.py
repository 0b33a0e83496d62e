"""The in-process limiter and the Redis one decide alike: the same admits and settles (requests, tokens,
concurrency, daily budget) against `LocalLimiter` on a clock that stands still and `RedisLimiter` on a real
redis-server give the same verdicts and the same remaining counts, step by step.

Redis reads its own clock (TIME), which moves on by milliseconds during a run; the limits here refill at
most one unit a second, so that cannot change a verdict, and retry times may differ by less than a second.
Each run has a key prefix of its own on the session's redis-server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capibara_facade.callers.local_limiter import LocalLimiter
from capibara_facade.callers.rates import Decision, Limits
from capibara_facade.callers.redis_limiter import RedisLimiter
from tests.redis_server import RedisServer


class Admit(NamedTuple):
    key: str
    limits: Limits
    cost: int
    lease: str


class Settle(NamedTuple):
    key: str
    limits: Limits
    delta: int  # tokens used minus reserved
    lease: str


class Wait(NamedTuple):
    seconds: float  # the fake clock is moved; Redis's really passes


Step = Admit | Settle | Wait


class Verdict(NamedTuple):
    """What must agree: allowed, which limit refused, what is left; and, within a second, when to retry."""

    allowed: bool
    reason: str
    requests_remaining: int
    tokens_remaining: int
    retry_after: float

    @classmethod
    def of(cls, decision: Decision) -> Verdict:
        return cls(
            decision.allowed,
            decision.reason,
            decision.requests_remaining,
            decision.tokens_remaining,
            decision.retry_after,
        )

    def agrees_with(self, other: Verdict) -> bool:
        return self[:4] == other[:4] and abs(self.retry_after - other.retry_after) < 1


class Fake:
    def __init__(self) -> None:
        self.now = time.time()  # today, for the daily budget's UTC day

    def __call__(self) -> float:
        return self.now


async def run_both(redis_url: str, steps: Sequence[Step]) -> list[tuple[Verdict, Verdict]]:
    """Each admission's verdict from both limiters, in lockstep (settles and waits go to both)."""
    clock = Fake()
    local = LocalLimiter(clock)
    shared = RedisLimiter(redis_url, 5.0, f"parity-{uuid.uuid4().hex}", lease_seconds=60)
    verdicts: list[tuple[Verdict, Verdict]] = []
    try:
        for step in steps:
            if isinstance(step, Admit):
                mine = local.admit(*step)
                theirs = await shared.admit(*step, now=clock.now)
                verdicts.append((Verdict.of(mine), Verdict.of(theirs)))
            elif isinstance(step, Settle):
                local.settle(*step)
                await shared.settle(*step, admitted_at=clock.now)
            else:
                clock.now += step.seconds
                await asyncio.sleep(step.seconds)
    finally:
        await shared.aclose()
    return verdicts


def assert_parity(verdicts: list[tuple[Verdict, Verdict]]) -> list[str]:
    """Both limiters agree at every step; the reasons, in order ("" for allowed)."""
    for step, (local, redis) in enumerate(verdicts):
        assert local.agrees_with(redis), f"admission {step}: in-process {local} but Redis {redis}"
    return [local.reason for local, _ in verdicts]


EVERY_LIMIT = Limits(requests_per_minute=3, tokens_per_minute=60, max_concurrent=2, daily_tokens=100)
TOKENS = Limits(tokens_per_minute=60)
DAILY = Limits(daily_tokens=100)


def test_both_limiters_refuse_the_same_requests_for_the_same_reasons(redis_server: RedisServer) -> None:
    steps: list[Step] = [
        Admit("team", EVERY_LIMIT, 30, "1"),
        Admit("team", EVERY_LIMIT, 20, "2"),
        Admit("team", EVERY_LIMIT, 5, "3"),  # two in flight already
        Settle("team", EVERY_LIMIT, -25, "1"),  # used 5 of its 30: 25 tokens in use now
        Admit("team", EVERY_LIMIT, 40, "3"),  # 25 + 40 > 60
        Admit("team", EVERY_LIMIT, 30, "3"),  # the third request of the minute
        Settle("team", EVERY_LIMIT, 0, "2"),
        Settle("team", EVERY_LIMIT, 0, "3"),
        Admit("team", EVERY_LIMIT, 1, "4"),  # a fourth request in the minute
        Admit("other", TOKENS, 61, "5"),  # more than a minute's tokens, whatever is left
        Admit("other", TOKENS, 10, "6"),
        Settle("other", TOKENS, 40, "6"),  # used 50 of its 10
        Admit("other", TOKENS, 15, "7"),  # 50 + 15 > 60
        Admit("other", TOKENS, 10, "8"),
        Admit("budget", DAILY, 80, "9"),
        Admit("budget", DAILY, 30, "10"),  # 80 + 30 > 100 today
        Settle("budget", DAILY, -50, "9"),  # used 30 of its 80
        Admit("budget", DAILY, 70, "11"),
        Admit("budget", DAILY, 1, "12"),
    ]
    verdicts = asyncio.run(run_both(redis_server.url, steps))
    assert assert_parity(verdicts) == [
        "", "", "concurrent", "tokens", "", "requests", "too_large", "", "tokens", "", "", "daily", "", "daily",
    ]  # fmt: skip


def test_a_request_that_outlasts_the_refill_is_charged_its_overuse_from_now_by_both(redis_server: RedisServer) -> None:
    """The bucket is full again (1 token a second, 1 reserved, 2 s later) when the request turns out to have
    used 30 more than it reserved: both charge those 30 from now, so a request of 31 no longer fits."""
    steps: list[Step] = [
        Admit("long", TOKENS, 1, "1"),
        Wait(2.0),
        Settle("long", TOKENS, 30, "1"),
        Admit("long", TOKENS, 31, "2"),
        Admit("long", TOKENS, 30, "3"),
    ]
    verdicts = asyncio.run(run_both(redis_server.url, steps))
    assert assert_parity(verdicts) == ["", "tokens", ""]


# Limits whose refill steps are whole milliseconds (60 000 ms divided by each), at most one unit a second.
limits = st.builds(
    Limits,
    requests_per_minute=st.sampled_from([0, 2, 3, 5]),
    tokens_per_minute=st.sampled_from([0, 20, 30, 60]),
    max_concurrent=st.sampled_from([0, 1, 2, 3]),
    daily_tokens=st.sampled_from([0, 50, 100]),
)
# An admission of `cost` tokens for one of two keys, or the settling of an earlier one still open.
actions = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from(["a", "b"]), st.integers(0, 80)),
        st.tuples(st.just("settle"), st.integers(0, 10), st.integers(0, 80)),
    ),
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(limits=limits, actions=actions)
def test_any_sequence_of_admits_and_settles_gets_the_same_verdicts_from_both(
    redis_server: RedisServer, limits: Limits, actions: list[tuple[str, str | int, int]]
) -> None:
    asyncio.run(_lockstep(redis_server.url, limits, actions))


async def _lockstep(redis_url: str, limits: Limits, actions: list[tuple[str, str | int, int]]) -> None:
    """Admits and settles in the order drawn; a settle ends one of the requests admitted and not yet ended
    (which ones were admitted is what both limiters must agree on), with the usage drawn."""
    clock = Fake()
    local = LocalLimiter(clock)
    shared = RedisLimiter(redis_url, 5.0, f"parity-{uuid.uuid4().hex}", lease_seconds=60)
    open_requests: list[Admit] = []
    try:
        for number, (action, which, tokens) in enumerate(actions):
            if action == "admit":
                admit = Admit(str(which), limits, tokens, str(number))
                mine = Verdict.of(local.admit(*admit))
                theirs = Verdict.of(await shared.admit(*admit, now=clock.now))
                assert mine.agrees_with(theirs), f"step {number}: in-process {mine} but Redis {theirs}"
                if mine.allowed:
                    open_requests.append(admit)
            elif open_requests:
                admitted = open_requests.pop(int(which) % len(open_requests))
                settle = Settle(admitted.key, limits, tokens - admitted.cost, admitted.lease)
                local.settle(*settle)
                await shared.settle(*settle, admitted_at=clock.now)
    finally:
        await shared.aclose()


@pytest.mark.parametrize("limit", ["requests_per_minute", "tokens_per_minute", "max_concurrent", "daily_tokens"])
def test_each_limit_refuses_at_the_same_step_in_both(redis_server: RedisServer, limit: str) -> None:
    """One limit of 2 (2 tokens for the token limits), one-token requests that never end: the third is the
    first refused, by both."""
    only = Limits(**{limit: 2})
    steps: list[Step] = [Admit("solo", only, 1, str(number)) for number in range(4)]
    verdicts = asyncio.run(run_both(redis_server.url, steps))
    refused_for = {"requests_per_minute": "requests", "tokens_per_minute": "tokens"}
    reason = refused_for.get(limit, "concurrent" if limit == "max_concurrent" else "daily")
    assert assert_parity(verdicts) == ["", "", reason, reason]
