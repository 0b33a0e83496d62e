"""The in-process limiter on a hand-moved clock: GCRA lets a caller spend a minute's allowance at once and gives
it back continuously; tokens are reserved up front and settled to the real usage; a request larger than a
minute's tokens is refused outright; concurrency is a set of leases; the daily budget renews at 00:00 UTC. And
the limits as OpenAI's `x-ratelimit-*` headers tell them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from capibara_facade.callers.local_limiter import LocalLimiter
from capibara_facade.callers.rates import Decision, Limits, ratelimit_headers
from capibara_facade.config import QuotaConfig

KEY = "caller:alice"


class Clock:
    """Unix time, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp())


@pytest.fixture
def limiter(clock: Clock) -> LocalLimiter:
    return LocalLimiter(clock)


def _admit(limiter: LocalLimiter, limits: Limits, cost: int = 0, lease: str = "lease", key: str = KEY) -> Decision:
    return limiter.admit(key, limits, cost, lease)


# --- requests per minute ---------------------------------------------------------------------------------------


def test_a_caller_may_spend_a_whole_minutes_requests_at_once_then_waits_one_interval(
    limiter: LocalLimiter, clock: Clock
) -> None:
    limits = Limits(requests_per_minute=3)
    assert [_admit(limiter, limits).allowed for _ in range(3)] == [True, True, True]
    refused = _admit(limiter, limits)
    assert (refused.allowed, refused.reason) == (False, "requests")
    assert refused.retry_after == pytest.approx(20.0)  # one request's share of the minute: 60 s / 3
    clock.now += 20.0
    assert _admit(limiter, limits).allowed
    assert not _admit(limiter, limits).allowed


def test_the_allowance_comes_back_continuously_not_at_a_window_boundary(limiter: LocalLimiter, clock: Clock) -> None:
    limits = Limits(requests_per_minute=60)
    assert all(_admit(limiter, limits).allowed for _ in range(60))
    clock.now += 5.0  # five seconds give back five requests, not a whole new minute
    assert [_admit(limiter, limits).allowed for _ in range(6)] == [True] * 5 + [False]


def test_a_refused_request_takes_nothing_from_the_allowance(limiter: LocalLimiter, clock: Clock) -> None:
    limits = Limits(requests_per_minute=2)
    _admit(limiter, limits), _admit(limiter, limits)
    for _ in range(10):
        assert not _admit(limiter, limits).allowed
    clock.now += 30.0
    assert _admit(limiter, limits).allowed


def test_an_admission_reports_what_is_left_and_when_the_bucket_is_full_again(limiter: LocalLimiter) -> None:
    limits = Limits(requests_per_minute=3)
    first = _admit(limiter, limits)
    assert (first.requests_remaining, first.requests_reset) == pytest.approx((2, 20.0))
    _admit(limiter, limits)
    last = _admit(limiter, limits)
    assert (last.requests_remaining, last.requests_reset) == pytest.approx((0, 60.0))


def test_callers_keep_separate_counts(limiter: LocalLimiter) -> None:
    limits = Limits(requests_per_minute=1)
    assert _admit(limiter, limits, key="caller:alice").allowed
    assert not _admit(limiter, limits, key="caller:alice").allowed
    assert _admit(limiter, limits, key="public:192.0.2.7").allowed


# --- tokens per minute: reserve, then settle -------------------------------------------------------------------


def test_tokens_are_reserved_up_front_and_a_request_that_does_not_fit_waits(limiter: LocalLimiter) -> None:
    limits = Limits(tokens_per_minute=1000)
    first = _admit(limiter, limits, cost=600)
    assert (first.allowed, first.tokens_remaining) == (True, 400)
    refused = _admit(limiter, limits, cost=600)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    assert refused.retry_after == pytest.approx(12.0)  # 200 tokens too many, at 1000 per 60 s


def test_settling_to_the_real_usage_gives_back_what_was_reserved_but_not_used(limiter: LocalLimiter) -> None:
    limits = Limits(tokens_per_minute=1000)
    _admit(limiter, limits, cost=600, lease="first")
    limiter.settle(KEY, limits, 100 - 600, "first")  # it used 100 of the 600 it reserved
    second = _admit(limiter, limits, cost=600)
    assert (second.allowed, second.tokens_remaining) == (True, 300)


def test_settling_charges_what_a_request_used_beyond_its_reservation(limiter: LocalLimiter) -> None:
    limits = Limits(tokens_per_minute=1000)
    _admit(limiter, limits, cost=100, lease="first")
    limiter.settle(KEY, limits, 900 - 100, "first")
    assert _admit(limiter, limits, cost=200).reason == "tokens"


def test_a_request_larger_than_a_minutes_tokens_is_refused_as_too_large_and_takes_nothing(
    limiter: LocalLimiter,
) -> None:
    limits = Limits(requests_per_minute=10, tokens_per_minute=1000)
    refused = _admit(limiter, limits, cost=1001)
    assert (refused.allowed, refused.reason) == (False, "too_large")
    allowed = _admit(limiter, limits, cost=1000)
    assert (allowed.allowed, allowed.requests_remaining, allowed.tokens_remaining) == (True, 9, 0)


def test_a_request_refused_for_tokens_takes_no_request_either(limiter: LocalLimiter) -> None:
    limits = Limits(requests_per_minute=2, tokens_per_minute=100)
    assert _admit(limiter, limits, cost=100).allowed
    assert _admit(limiter, limits, cost=1).reason == "tokens"
    second = _admit(limiter, limits, cost=0)  # the second request of two: the refused one did not count
    assert (second.allowed, second.requests_remaining) == (True, 0)


def test_a_refused_request_reports_what_is_left_as_it_stands(limiter: LocalLimiter) -> None:
    limits = Limits(requests_per_minute=10, tokens_per_minute=100)
    _admit(limiter, limits, cost=100)
    refused = _admit(limiter, limits, cost=1)
    assert refused.reason == "tokens"
    # Requests remain (a 429 for tokens must not say "0 requests left"); the tokens are spent.
    assert (refused.requests_remaining, refused.tokens_remaining) == (9, 0)
    assert (refused.requests_reset, refused.tokens_reset) == pytest.approx((6.0, 60.0))


# --- concurrency ---------------------------------------------------------------------------------------------


def test_requests_in_flight_are_capped_and_an_ended_one_frees_its_place(limiter: LocalLimiter) -> None:
    limits = Limits(max_concurrent=2)
    assert _admit(limiter, limits, lease="a").allowed
    assert _admit(limiter, limits, lease="b").allowed
    refused = _admit(limiter, limits, lease="c")
    assert (refused.allowed, refused.reason) == (False, "concurrent")
    limiter.settle(KEY, limits, 0, "a")
    assert _admit(limiter, limits, lease="c").allowed
    assert _admit(limiter, limits, lease="d", key="caller:bob").allowed  # another caller's places are its own


def test_a_request_refused_for_concurrency_takes_no_request(limiter: LocalLimiter) -> None:
    limits = Limits(requests_per_minute=2, max_concurrent=1)
    assert _admit(limiter, limits, lease="a").allowed
    assert _admit(limiter, limits, lease="b").reason == "concurrent"
    limiter.settle(KEY, limits, 0, "a")
    assert _admit(limiter, limits, lease="b").allowed  # the second of two requests per minute


# --- the daily budget ------------------------------------------------------------------------------------------


def test_the_daily_budget_is_spent_then_renews_at_midnight_utc(clock: Clock) -> None:
    clock.now = datetime(2026, 3, 1, 23, 59, tzinfo=UTC).timestamp()
    limiter = LocalLimiter(clock)
    limits = Limits(daily_tokens=1000)
    assert _admit(limiter, limits, cost=800).allowed
    refused = _admit(limiter, limits, cost=300)
    assert (refused.allowed, refused.reason) == (False, "daily")
    assert refused.retry_after == pytest.approx(60.0)  # until 00:00 UTC
    clock.now += 60.0
    assert _admit(limiter, limits, cost=1000).allowed


def test_settling_gives_back_the_days_tokens_a_request_did_not_use(limiter: LocalLimiter) -> None:
    limits = Limits(daily_tokens=1000)
    _admit(limiter, limits, cost=800, lease="first")
    limiter.settle(KEY, limits, 50 - 800, "first")
    assert _admit(limiter, limits, cost=900).allowed
    assert _admit(limiter, limits, cost=100).reason == "daily"


# --- the limits, and how the client is told ------------------------------------------------------------------


def test_limits_come_from_the_quota_with_every_unset_limit_off() -> None:
    assert Limits.of(QuotaConfig(requests_per_minute=30, daily_tokens=9000)) == Limits(30, 0, 0, 9000)


def test_a_share_of_the_limits_scales_each_down_and_keeps_at_least_one() -> None:
    assert Limits(10, 1000, 3, 0).share(0.5) == Limits(5, 500, 1, 0)
    assert Limits(1, 0, 1, 0).share(0.1) == Limits(1, 0, 1, 0)
    assert Limits(10, 1000, 3, 0).share(1.0) == Limits(10, 1000, 3, 0)


def test_the_headers_are_openais_with_durations_written_its_way() -> None:
    limits = Limits(requests_per_minute=60, tokens_per_minute=150000)
    decision = Decision(True, requests_remaining=59, requests_reset=1.0, tokens_remaining=149000, tokens_reset=0.02)
    assert ratelimit_headers(limits, decision) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"150000"),
        (b"x-ratelimit-remaining-tokens", b"149000"),
        (b"x-ratelimit-reset-tokens", b"20ms"),
    ]


@pytest.mark.parametrize(
    ("seconds", "written"),
    [(0.0004, b"1ms"), (0.25, b"250ms"), (1.5, b"1.5s"), (59.9, b"59.9s"), (60, b"1m0s"), (119.5, b"2m0s"),
     (359.2, b"6m0s")],
)  # fmt: skip
def test_a_reset_duration_rounds_up_and_never_writes_sixty_seconds(seconds: float, written: bytes) -> None:
    headers = dict(ratelimit_headers(Limits(requests_per_minute=1), Decision(False, requests_reset=seconds)))
    assert headers[b"x-ratelimit-reset-requests"] == written


def test_only_the_limits_a_caller_has_get_headers() -> None:
    assert ratelimit_headers(Limits(max_concurrent=2, daily_tokens=10), Decision(True)) == []
    names = [name for name, _ in ratelimit_headers(Limits(tokens_per_minute=10), Decision(True))]
    assert names == [b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens"]


@pytest.mark.parametrize("per_minute", [7, 13, 30, 97, 600, 999])
def test_a_whole_burst_within_one_instant_is_allowed_to_its_last_request(clock: Clock, per_minute: int) -> None:
    """Float rounding of the bucket time must not refuse the limit's last request (7 a minute is 7, not 6)."""
    limiter = LocalLimiter(clock)
    limits = Limits(requests_per_minute=per_minute)
    allowed = [_admit(limiter, limits, lease=f"l{index}").allowed for index in range(per_minute + 1)]
    assert allowed == [True] * per_minute + [False]


def test_a_settle_after_midnight_does_not_refund_yesterdays_tokens_against_today(clock: Clock) -> None:
    clock.now = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    limiter = LocalLimiter(clock)
    limits = Limits(daily_tokens=1000)
    admitted_at = clock.now
    assert _admit(limiter, limits, cost=900).allowed
    clock.now += 2  # the next UTC day: a fresh budget
    assert _admit(limiter, limits, cost=900, lease="today").allowed
    limiter.settle(KEY, limits, -900, "lease", admitted_at)  # yesterday's request used nothing after all
    assert not _admit(limiter, limits, cost=200, lease="more").allowed  # today's 900 still count
