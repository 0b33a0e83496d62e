"""Picking a target: the less loaded of two weighted random choices, affinity that sticks until its target
is full or ejected, `max_in_flight` held, a bounded queue that wakes a waiter when a slot frees and answers
503 + Retry-After when none does; and a retry budget that never amplifies a failing fleet's load."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar, cast

import pytest

from capibara_facade.catalog import Route
from capibara_facade.config import RoutingConfig, UpstreamConfig
from capibara_facade.errors import UpstreamUnavailable
from capibara_facade.upstream import routing as routing_module
from capibara_facade.upstream.breaker import Breaker
from capibara_facade.upstream.routing import Attempts, Balancer, RetryBudget, Slot, Target, Verdict
from capibara_facade.upstream.upstreams import Upstream
from tests.fake_clock import Clock, install

T = TypeVar("T")


class FakeUpstream:
    """What the balancer reads of an `Upstream`: its name, limit, breaker and requests in flight."""

    def __init__(self, name: str, max_in_flight: int | None = None) -> None:
        self.name = name
        self.config = UpstreamConfig(max_in_flight=max_in_flight, eject_after_failures=2)
        self.breaker = Breaker(2, 30.0, 60.0)
        self.in_flight = 0

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1

    def eject(self) -> None:
        for _ in range(self.config.eject_after_failures):
            self.breaker.failed()


def _target(name: str, weight: int = 1, max_in_flight: int | None = None, model: str = "model") -> Target:
    upstream = cast(Upstream, FakeUpstream(name, max_in_flight))
    return Target(Route(model, name, "served-model"), upstream, weight)


def _fake(target: Target) -> FakeUpstream:
    return cast(FakeUpstream, target.upstream)


def _balancer(seed: int = 7, **routing: Any) -> Balancer:
    return Balancer(RoutingConfig(**routing), random.Random(seed))


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 10))  # a hung queue fails the test instead of hanging it


def _picks(balancer: Balancer, targets: Sequence[Target], count: int, key: str | None = None) -> list[str]:
    """Which upstream each of `count` requests goes to, each answered before the next is sent."""

    async def pick() -> list[str]:
        names = []
        for _ in range(count):
            slot = await balancer.acquire(targets, key, set())
            names.append(slot.target.upstream.name)
            balancer.release(slot, Verdict.SUCCESS)
        return names

    return _run(pick())


# --- the power of two choices, with weights ---------------------------------------------------------


def test_a_request_goes_to_the_target_with_fewer_requests_in_flight() -> None:
    busy, idle = _target("busy"), _target("idle")
    _fake(busy).in_flight = 3
    assert set(_picks(_balancer(), [busy, idle], 200)) == {"idle"}


def test_the_most_loaded_of_three_targets_is_never_picked() -> None:
    targets = [_target("a"), _target("b"), _target("c")]
    for target, load in zip(targets, (0, 1, 5), strict=True):
        _fake(target).in_flight = load
    picks = collections.Counter(_picks(_balancer(), targets, 600))
    assert "c" not in picks  # every pair it is drawn in has a less loaded member
    assert picks["b"] > 0  # yet "a" is not a global choice: the pair (b, c) goes to b


def test_idle_targets_share_requests_in_proportion_to_their_weights() -> None:
    targets = [_target("big", weight=3), _target("small", weight=1)]
    picks = collections.Counter(_picks(_balancer(seed=11), targets, 4000))
    assert 0.72 < picks["big"] / 4000 < 0.78


def test_requests_held_open_spread_in_proportion_to_the_weights() -> None:
    targets = [_target("big", weight=3), _target("small", weight=1)]

    async def hold() -> collections.Counter[str]:
        balancer = _balancer()
        return collections.Counter(
            [(await balancer.acquire(targets, None, set())).target.upstream.name for _ in range(400)]
        )

    picks = _run(hold())
    assert abs(picks["big"] - 300) <= 1 and abs(picks["small"] - 100) <= 1


# --- affinity ----------------------------------------------------------------------------------------


def test_the_same_affinity_key_goes_to_the_same_target_every_time() -> None:
    targets = [_target("a"), _target("b"), _target("c")]
    for key in ("alice", "bob", "carol", "dave"):
        assert len(set(_picks(_balancer(), targets, 30, key))) == 1


def test_different_affinity_keys_are_spread_over_the_targets() -> None:
    targets = [_target("a"), _target("b")]
    chosen = {_picks(_balancer(), targets, 1, f"session-{number}")[0] for number in range(16)}
    assert chosen == {"a", "b"}


def test_an_affinity_key_moves_while_its_target_is_full_and_comes_back_after() -> None:
    targets = [_target("a", max_in_flight=2), _target("b", max_in_flight=2)]
    balancer = _balancer()
    (home,) = set(_picks(balancer, targets, 5, "alice"))
    preferred = next(target for target in targets if target.upstream.name == home)
    _fake(preferred).in_flight = 2
    assert set(_picks(balancer, targets, 5, "alice")) == {"b" if home == "a" else "a"}
    _fake(preferred).in_flight = 1
    assert set(_picks(balancer, targets, 5, "alice")) == {home}


def test_an_affinity_key_moves_while_its_target_is_ejected() -> None:
    targets = [_target("a"), _target("b")]
    balancer = _balancer()
    (home,) = set(_picks(balancer, targets, 5, "alice"))
    preferred = next(target for target in targets if target.upstream.name == home)
    _fake(preferred).eject()
    assert set(_picks(balancer, targets, 5, "alice")) == {"b" if home == "a" else "a"}


# --- limits and the queue ----------------------------------------------------------------------------


def test_no_target_is_given_more_than_its_max_in_flight() -> None:
    targets = [_target("a", max_in_flight=2), _target("b", max_in_flight=3)]

    async def fill() -> tuple[collections.Counter[str], UpstreamUnavailable]:
        balancer = _balancer(queue_timeout_seconds=0.05)
        held = collections.Counter(
            [(await balancer.acquire(targets, None, set())).target.upstream.name for _ in range(5)]
        )
        with pytest.raises(UpstreamUnavailable) as refused:
            await balancer.acquire(targets, None, set())
        return held, refused.value

    held, refused = _run(fill())
    assert held == {"a": 2, "b": 3}
    assert (refused.status, refused.headers(), refused.failure) == (503, {"Retry-After": "1"}, "busy")


def test_a_waiting_request_gets_the_slot_a_finished_one_gives_back() -> None:
    only = _target("only", max_in_flight=1)

    async def scenario() -> Slot:
        balancer = _balancer(queue_timeout_seconds=30)  # far longer than the test may take: woken, not timed out
        first = await balancer.acquire([only], None, set())
        waiting = asyncio.ensure_future(balancer.acquire([only], None, set()))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        balancer.release(first, Verdict.SUCCESS)
        return await asyncio.wait_for(waiting, 5)

    assert _run(scenario()).target is only
    assert _fake(only).in_flight == 1


def test_a_request_waiting_for_one_upstream_is_woken_when_that_upstream_frees_a_slot() -> None:
    # One balancer serves every model: a slot freed on one upstream must reach a request waiting for it,
    # even when a request for another (still full) upstream has waited longer.
    first_model, second_model = _target("first", max_in_flight=1), _target("second", max_in_flight=1)

    async def scenario() -> Slot:
        balancer = _balancer(queue_timeout_seconds=30)
        await balancer.acquire([first_model], None, set())
        held = await balancer.acquire([second_model], None, set())
        waiting_longer = asyncio.ensure_future(balancer.acquire([first_model], None, set()))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(balancer.acquire([second_model], None, set()))
        await asyncio.sleep(0)
        balancer.release(held, Verdict.SUCCESS)
        try:
            return await asyncio.wait_for(waiting, 5)
        finally:
            waiting_longer.cancel()

    assert _run(scenario()).target is second_model


def test_a_request_that_waited_the_queue_timeout_gets_503_with_retry_after() -> None:
    only = _target("only", max_in_flight=1)

    async def scenario() -> UpstreamUnavailable:
        balancer = _balancer(queue_timeout_seconds=0.05)
        await balancer.acquire([only], None, set())
        with pytest.raises(UpstreamUnavailable) as refused:
            await balancer.acquire([only], None, set())
        return refused.value

    refused = _run(scenario())
    assert (refused.status, refused.code, refused.headers()) == (503, "no_upstream_available", {"Retry-After": "1"})


def test_requests_beyond_max_queued_are_refused_at_once() -> None:
    only = _target("only", max_in_flight=1)

    async def scenario() -> str:
        balancer = _balancer(queue_timeout_seconds=30, max_queued=2)
        await balancer.acquire([only], None, set())
        queued = [asyncio.ensure_future(balancer.acquire([only], None, set())) for _ in range(2)]
        await asyncio.sleep(0)
        try:
            # Refused without waiting: were it queued, the 30 s queue timeout would outlast this bound.
            with pytest.raises(UpstreamUnavailable) as refused:
                await asyncio.wait_for(balancer.acquire([only], None, set()), 5)
        finally:
            for waiter in queued:
                waiter.cancel()
        assert not any(waiter.done() and not waiter.cancelled() for waiter in queued)
        return refused.value.failure

    assert _run(scenario()) == "busy"


def test_when_every_target_is_ejected_the_answer_is_503_at_once_with_the_time_to_the_next_trial() -> None:
    targets = [_target("a"), _target("b")]
    for target in targets:
        _fake(target).eject()  # a 30 s cooldown each

    async def scenario() -> UpstreamUnavailable:
        with pytest.raises(UpstreamUnavailable) as refused:
            await _balancer(queue_timeout_seconds=30).acquire(targets, None, set())
        return refused.value

    refused = _run(scenario())
    assert refused.failure == "ejected"
    assert 29 <= int(refused.headers()["Retry-After"]) <= 30


def test_a_release_feeds_the_upstreams_breaker_its_verdict() -> None:
    only = _target("only")

    async def scenario() -> None:
        balancer = _balancer()
        for verdict in (Verdict.FAILURE, Verdict.NONE, Verdict.FAILURE):
            balancer.release(await balancer.acquire([only], None, set()), verdict)

    _run(scenario())
    assert (_fake(only).breaker.state, _fake(only).in_flight) == ("open", 0)


# --- attempts: a model's targets, then its fallbacks', never one twice --------------------------------


def test_a_request_tries_each_target_once_then_the_fallback_models() -> None:
    own = [_target("a"), _target("b")]
    fallback = [_target("c", model="backup")]

    async def scenario() -> tuple[list[tuple[str | None, str]], UpstreamUnavailable]:
        balancer = _balancer()
        attempts = Attempts(balancer, RetryBudget(100, 10, 10), [("model", own), ("backup", fallback)], None, 5)
        tried = []
        for _ in range(3):
            slot = await attempts.next()
            tried.append((slot.target.route.public_name, slot.target.upstream.name))
            attempts.release(slot, Verdict.FAILURE)
        with pytest.raises(UpstreamUnavailable) as exhausted:
            await attempts.next()
        return tried, exhausted.value

    tried, exhausted = _run(scenario())
    assert sorted(tried[:2]) == [("model", "a"), ("model", "b")]
    assert tried[2] == ("backup", "c")
    assert exhausted.status == 503


def test_no_attempt_is_made_beyond_max_attempts() -> None:
    targets = [_target("a"), _target("b"), _target("c")]

    async def scenario() -> list[bool]:
        attempts = Attempts(_balancer(), RetryBudget(100, 10, 10), [("model", targets)], None, 2)
        answers = []
        for _ in range(2):
            slot = await attempts.next()
            attempts.release(slot, Verdict.FAILURE)
            answers.append(attempts.may_retry())
        return answers

    assert _run(scenario()) == [True, False]


# --- the retry budget --------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return install(monkeypatch, routing_module)


def _allowed(budget: RetryBudget, asked: int) -> int:
    return sum(budget.allow_retry() for _ in range(asked))


def test_a_quiet_facade_may_always_make_the_minimum_number_of_retries(clock: Clock) -> None:
    budget = RetryBudget(percent=20, window_seconds=10, minimum=3)
    budget.attempted()
    assert _allowed(budget, 10) == 3


def test_retries_are_capped_at_the_percentage_of_first_attempts_in_the_window(clock: Clock) -> None:
    budget = RetryBudget(percent=20, window_seconds=10, minimum=3)
    for _ in range(100):
        budget.attempted()
    assert _allowed(budget, 50) == 20
    budget.attempted()  # the share grows with the traffic, not with the failures
    for _ in range(4):
        budget.attempted()
    assert _allowed(budget, 50) == 1


def test_the_budget_is_renewed_as_the_window_slides(clock: Clock) -> None:
    budget = RetryBudget(percent=20, window_seconds=10, minimum=3)
    for _ in range(50):
        budget.attempted()
    assert _allowed(budget, 50) == 10
    clock.now += 5
    assert _allowed(budget, 50) == 0  # still within the window: spent
    clock.now += 5.01
    assert _allowed(budget, 50) == 3  # attempts and retries both expired: the minimum again


def test_the_retry_budget_keeps_a_bounded_count_however_many_requests_arrive(clock: Clock) -> None:
    budget = RetryBudget(20, 10, 0)
    for _ in range(100_000):  # 100,000 requests over 20 s: twice the window
        budget.attempted()
        clock.now += 0.0002
    assert len(budget._attempts) <= 1001  # slices of the window, not one entry per request
    assert budget.allow_retry()  # and the budget still counts the last window's attempts
