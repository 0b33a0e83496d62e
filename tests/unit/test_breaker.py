"""The circuit breaker: an upstream that keeps failing is ejected, tried again by one request after a cooldown
that grows while it keeps failing, and taken back the moment it answers."""

from __future__ import annotations

import pytest

from capibara_facade.upstream import breaker as breaker_module
from capibara_facade.upstream.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.fake_clock import Clock, install


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return install(monkeypatch, breaker_module)


def _opened(threshold: int = 3, cooldown: float = 1.0, max_cooldown: float = 5.0) -> Breaker:
    breaker = Breaker(threshold, cooldown, max_cooldown)
    for _ in range(threshold):
        breaker.failed()
    assert breaker.state == OPEN
    return breaker


def test_a_breaker_opens_after_the_configured_number_of_consecutive_failures(clock: Clock) -> None:
    breaker = Breaker(3, 1.0, 5.0)
    breaker.failed()
    breaker.failed()
    assert (breaker.state, breaker.available()) == (CLOSED, True)
    breaker.failed()
    assert (breaker.state, breaker.available()) == (OPEN, False)


def test_a_success_starts_the_count_of_consecutive_failures_over(clock: Clock) -> None:
    breaker = Breaker(3, 1.0, 5.0)
    for _ in range(2):
        breaker.failed()
    breaker.succeeded()
    for _ in range(2):
        breaker.failed()
    assert (breaker.state, breaker.available()) == (CLOSED, True)


def test_an_open_breaker_says_how_long_until_it_lets_a_trial_through(clock: Clock) -> None:
    breaker = _opened(cooldown=2.0)
    assert breaker.retry_after() == 2.0
    clock.now += 1.5
    assert breaker.retry_after() == 0.5
    assert Breaker(3, 2.0, 5.0).retry_after() == 0.0  # a closed one would take a request now


def test_after_the_cooldown_exactly_one_trial_request_is_let_through(clock: Clock) -> None:
    breaker = _opened(cooldown=1.0)
    clock.now += 0.99
    assert not breaker.available()
    clock.now += 0.01
    assert (breaker.available(), breaker.state) == (True, HALF_OPEN)
    breaker.admit()  # the trial is sent
    assert not breaker.available()  # every other request waits for its verdict
    assert breaker.state == HALF_OPEN


def test_a_successful_trial_closes_the_breaker(clock: Clock) -> None:
    breaker = _opened(cooldown=1.0)
    clock.now += 1.0
    assert breaker.available()
    breaker.admit()
    breaker.succeeded()
    assert (breaker.state, breaker.available()) == (CLOSED, True)


def test_a_failed_trial_opens_the_breaker_again_for_twice_as_long_up_to_the_ceiling(clock: Clock) -> None:
    breaker = _opened(cooldown=1.0, max_cooldown=5.0)
    cooldowns = []
    for _ in range(5):
        clock.now += 60
        assert breaker.available()
        breaker.admit()
        breaker.failed()
        assert breaker.state == OPEN
        cooldowns.append(breaker.retry_after())
    assert cooldowns == [2.0, 4.0, 5.0, 5.0, 5.0]
    clock.now += 4.99
    assert not breaker.available()  # the ceiling is a real wait, not a reset
    clock.now += 0.01
    assert breaker.available()


def test_a_recovered_upstream_starts_again_from_the_base_cooldown(clock: Clock) -> None:
    breaker = _opened(threshold=1, cooldown=1.0, max_cooldown=8.0)
    clock.now += 1.0
    breaker.available()
    breaker.admit()
    breaker.failed()  # cooldown now 2 s
    clock.now += 2.0
    breaker.available()
    breaker.admit()
    breaker.succeeded()
    breaker.failed()  # threshold 1: open again, for the base cooldown
    assert (breaker.state, breaker.retry_after()) == (OPEN, 1.0)


def test_a_trial_whose_client_left_lets_the_next_request_be_the_trial(clock: Clock) -> None:
    breaker = _opened(cooldown=1.0)
    clock.now += 1.0
    breaker.available()
    breaker.admit()
    assert not breaker.available()
    breaker.abandoned()  # no verdict: the upstream is neither proven healthy nor sick
    assert (breaker.state, breaker.available()) == (HALF_OPEN, True)


def test_every_change_of_state_is_reported_once(clock: Clock) -> None:
    changes: list[str] = []
    breaker = Breaker(2, 1.0, 5.0, on_change=changes.append)
    for _ in range(3):
        breaker.failed()  # the third, already open, changes nothing
    clock.now += 1.0
    breaker.available()
    breaker.available()
    breaker.admit()
    breaker.succeeded()
    breaker.succeeded()
    assert changes == [OPEN, HALF_OPEN, CLOSED]


def test_in_half_open_only_the_trial_decides_not_requests_sent_before_the_ejection(clock: Clock) -> None:
    breaker = _opened(cooldown=1.0)
    clock.now += 1.0
    assert breaker.available() and breaker.admit()  # the trial
    assert not breaker.admit()  # a second request is no trial
    breaker.abandoned(trial=False)  # an old request whose client left frees nothing
    assert not breaker.available()
    breaker.failed(trial=False)  # nor does an old request's failure re-open it
    breaker.succeeded(trial=False)  # nor its success close it
    assert breaker.state == HALF_OPEN
    breaker.succeeded(trial=True)
    assert breaker.state == CLOSED
