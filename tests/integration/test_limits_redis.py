"""Limits shared through Redis (issue 11), with real processes on loopback: Debian's redis-server, the demo
upstream, and facades under uvicorn, two workers each where the point is that several processes share one
count. What holds when Redis is killed, hung, slow, or back again is at the end.

The rate limits are GCRA (see capibara_facade/callers/rates.py): a bucket of a minute's allowance, refilled
continuously. The counts asserted here are exact for a burst shorter than one refill; a test that could take
longer allows the refills its measured duration permits (`at_most`), which can only be more than Redis saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from capibara_facade.callers.rates import Decision, Limits
from capibara_facade.callers.redis_limiter import RedisLimiter
from capibara_facade.config.callers import hash_key
from tests import support
from tests.conftest import Upstream
from tests.redis_server import HungRedis, RedisServer

MODEL = "aya_expanse_multilingual"
HELLO = [{"role": "user", "content": "hola"}]
Quota = dict[str, int]

# A lease per request, only so that a test sees in Redis when requests are settled (wait_until_settled).
SEEN_SETTLED: Quota = {"max_concurrent": 100}
# The callers of the facades most tests share, each on its own counters: its key is "<name>-key".
CALLERS: dict[str, Quota] = {
    "per-minute": {"requests_per_minute": 30},
    "tokens": {"tokens_per_minute": 300, **SEEN_SETTLED},
    "streams": {"max_concurrent": 3},
    "leases": {"max_concurrent": 3},
}


def team(requests_per_minute: int) -> dict[str, Quota]:
    """One caller, "team", for the tests that have facades of their own."""
    return {"team": {"requests_per_minute": requests_per_minute, **SEEN_SETTLED}}


def facade_toml(upstream_url: str, limits: str, callers: dict[str, Quota], workers: int = 2) -> str:
    tables = ""
    for name, quota in callers.items():
        tables += f'[callers.{name}]\nkey_sha256 = "{hash_key(name + "-key")}"\n'
        tables += "".join(f"{field} = {value}\n" for field, value in quota.items())
    return f"""
[server]
workers = {workers}

[upstreams.default]
url = "{upstream_url}"

[[models]]
name = "{MODEL}"

{tables}
[limits]
{limits}
"""


class Facade:
    """A facade process, and a client of it whose connections are kept across requests."""

    def __init__(self, server: support.ServerProcess) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def chat(self, caller: str, **body: Any) -> httpx.Response:
        payload = {"model": MODEL, "messages": HELLO, **body}
        return self.http.post("/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {caller}-key"})

    def limiter(self) -> dict[str, Any]:
        """What /health says of the limiter."""
        state: dict[str, Any] = self.http.get("/health").json()["limiter"]
        return state

    def limiter_up(self) -> float:
        families = text_string_to_metric_families(self.http.get("/metrics").text)
        return next(s.value for f in families for s in f.samples if s.name == "capibara_limiter_up")


@contextlib.contextmanager
def running_together(*servers: support.ServerProcess) -> Iterator[list[Facade]]:
    """Start the facades at once (one with two workers takes seconds to come up); stop them all."""
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.start(), servers))
        facades = [Facade(server) for server in servers]
        with contextlib.ExitStack() as clients:
            for facade in facades:
                clients.enter_context(facade.http)
            yield facades
    finally:
        for server in servers:
            server.stop()


class Pair(NamedTuple):
    """Two facades, two workers each, sharing one Redis."""

    a: Facade
    b: Facade
    redis: RedisServer


@pytest.fixture(scope="module")
def pair(session_dir: Path, upstream: Upstream, redis_server: RedisServer) -> Iterator[Pair]:
    # A generous timeout: on a busy test machine a slow answer would silently become in-process limits.
    config = facade_toml(upstream.url, f'redis_url = "{redis_server.url}"\nredis_timeout_ms = 1000', CALLERS)
    with running_together(support.facade(session_dir, config), support.facade(session_dir, config)) as (a, b):
        yield Pair(a, b, redis_server)


def chat_at_once(facades: Sequence[Facade], caller: str, **body: Any) -> list[httpx.Response]:
    """One request to each entry of `facades`, all sent at the same time."""
    with ThreadPoolExecutor(20) as pool:
        return list(pool.map(lambda facade: facade.chat(caller, **body), facades))


def at_most(burst: int, per_minute: int, elapsed: float) -> int:
    """The most a shared GCRA limit lets through in `elapsed` seconds: the burst, plus one per refill."""
    return burst + int(elapsed * per_minute / 60)


def assert_rate_limited(answer: httpx.Response, kind: str) -> None:
    """A 429 the way OpenAI words its own, with when to come back."""
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == (kind, "rate_limit_exceeded")
    assert int(answer.headers["retry-after"]) >= 1
    assert int(answer.headers["retry-after-ms"]) > 0


def wait_until_settled(redis: RedisServer, caller: str) -> None:
    """Wait (bounded) until Redis holds no lease of the caller: every request of it has been settled."""
    leases = RedisLimiter(redis.url, 1.0, "capibara", 30).keys(f"caller:{caller}", 0)[3]
    with redis.client() as client:
        support.wait_for(lambda: True if client.zcard(leases) == 0 else None)


# --- shared limits ------------------------------------------------------------------------------------------


def test_two_facades_with_two_workers_each_let_exactly_the_shared_requests_per_minute_through(pair: Pair) -> None:
    """100 requests at once, half to each facade (four processes): 30 pass, the rest are 429 with OpenAI's
    headers. GCRA gives the whole minute's 30 at once and then one back every 60/30 = 2 s, so the count is
    30 plus one per 2 s the burst took (Redis's span between first and last check is within the elapsed
    time measured here): exactly 30 when it is over within 2 s."""
    started = time.monotonic()
    answers = chat_at_once([pair.a, pair.b] * 50, "per-minute")
    elapsed = time.monotonic() - started
    passed = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code != 200]
    assert 30 <= len(passed) <= at_most(30, 30, elapsed), (len(passed), elapsed)
    for answer in refused:
        assert_rate_limited(answer, "requests")
        assert answer.headers["x-ratelimit-limit-requests"] == "30"
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    assert {answer.headers["x-ratelimit-limit-requests"] for answer in passed} == {"30"}


def test_without_redis_each_process_counts_alone_and_more_than_the_limit_gets_through(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The same burst through the same facades with no redis_url: each process has its own 30 (what
    check-config warns of), so the shared bound of the test above is broken: the test above can fail."""
    config = facade_toml(upstream.url, "", {"per-minute": CALLERS["per-minute"]})
    with running_together(support.facade(tmp_path, config), support.facade(tmp_path, config)) as (a, b):
        started = time.monotonic()
        answers = chat_at_once([a, b] * 50, "per-minute")
        elapsed = time.monotonic() - started
    passed = sum(answer.status_code == 200 for answer in answers)
    assert passed > at_most(30, 30, elapsed), (passed, elapsed)


# Each stream below: the prompt is 37 words of 8 letters (332 characters: estimated 332 // 4 + 4 = 87 tokens)
# and max_tokens is 13, so the facade reserves 100 tokens; the demo upstream counts 37 prompt tokens (words)
# and answers 13, so the real usage is 50. At 300 tokens per minute, 5 streams fit when each is settled to
# its usage (4 * 50 + 100 <= 300), only 3 if reservations were kept; the sixth would need 50 tokens of
# refill: 10 s at 5 tokens a second.
LONG_PROMPT = [{"role": "user", "content": " ".join(["capibara"] * 37)}]


def test_tokens_per_minute_charge_each_stream_its_real_usage_across_both_facades(pair: Pair) -> None:
    started = time.monotonic()
    answers: list[httpx.Response] = []
    while len(answers) < 12 and (not answers or answers[-1].status_code == 200):
        facade = (pair.a, pair.b)[len(answers) % 2]
        usage = {"include_usage": True}
        answers.append(facade.chat("tokens", messages=LONG_PROMPT, max_tokens=13, stream=True, stream_options=usage))
        if answers[-1].status_code == 200:
            assert '"total_tokens":50}' in answers[-1].text  # the usage the arithmetic above counts on
        wait_until_settled(pair.redis, "tokens")
    elapsed = time.monotonic() - started
    *passed, refused = answers
    assert {answer.status_code for answer in passed} == {200}
    assert 5 <= len(passed) <= 5 + int(elapsed / 10), (len(passed), elapsed)
    assert passed[0].headers["x-ratelimit-remaining-tokens"] == "200"  # the reservation is taken up front
    assert_rate_limited(refused, "tokens")
    assert refused.headers["x-ratelimit-limit-tokens"] == "300"


def test_a_request_that_may_use_more_than_a_minutes_tokens_is_refused_as_too_large(
    pair: Pair, upstream: Upstream
) -> None:
    answer = pair.b.chat("tokens", max_tokens=400, stream=True)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert "too large" in error["message"]
    assert "retry-after" not in answer.headers  # waiting cannot help: the request must shrink
    assert answer.headers["x-should-retry"] == "false"  # so the openai SDK does not retry it
    request_id = answer.headers["x-request-id"]
    assert all(record["request_id"] != request_id for record in upstream.requests())


def test_at_most_max_concurrent_streams_run_at_once_across_both_facades(pair: Pair) -> None:
    """Six streams at once, three to each facade, whose upstream takes 3 s to answer: three start, three are
    refused. Once they are over, as many can start again."""
    answers = chat_at_once([pair.a, pair.b] * 3, "streams", stream=True, demo={"delay": 3})
    assert sorted(answer.status_code for answer in answers) == [200, 200, 200, 429, 429, 429]
    for answer in answers:
        if answer.status_code == 429:
            assert_rate_limited(answer, "requests")
            assert "in flight" in answer.json()["error"]["message"]
    wait_until_settled(pair.redis, "streams")
    again = chat_at_once([pair.b, pair.a, pair.b], "streams", stream=True, demo={"delay": 1})
    assert [answer.status_code for answer in again] == [200, 200, 200]


def test_the_leases_of_a_facade_killed_mid_stream_expire_and_free_their_places(
    tmp_path: Path, upstream: Upstream, pair: Pair
) -> None:
    """A third facade, whose leases last 2 s unless renewed, holds all three places of `leases` with slow
    streams: the others refuse that caller, past the 2 s too (the holder renews them). Killed with
    `kill -9`, it can end nothing: its leases expire on their own, and the places come back."""
    limits = f'redis_url = "{pair.redis.url}"\nredis_timeout_ms = 1000\nlease_seconds = 2'
    slow = {"model": MODEL, "messages": HELLO, "stream": True, "demo": {"chunk_delay": 20}}
    with (
        running_together(support.facade(tmp_path, facade_toml(upstream.url, limits, CALLERS, 1))) as (holder,),
        contextlib.ExitStack() as streams,
    ):
        for _ in range(3):
            opened = holder.http.stream(
                "POST", "/v1/chat/completions", json=slow, headers={"Authorization": "Bearer leases-key"}
            )
            assert streams.enter_context(opened).status_code == 200
        assert_rate_limited(pair.a.chat("leases"), "requests")
        time.sleep(3)  # longer than a lease: only renewals keep them
        assert_rate_limited(pair.b.chat("leases"), "requests")
        holder.server.signal(signal.SIGKILL)
        assert holder.server.process is not None
        holder.server.process.wait(10)
    assert support.wait_for(lambda: True if pair.a.chat("leases").status_code == 200 else None, within=15)


# --- when Redis is not there ----------------------------------------------------------------------------


def test_with_redis_killed_each_facade_limits_alone_and_shared_limits_resume_when_it_is_back(
    tmp_path: Path, upstream: Upstream, disposable_redis: RedisServer
) -> None:
    """fail_open (the default) with fallback_share 0.5: while Redis is away each process enforces half of
    every limit, here 3 of 6 requests a minute (a refill every 20 s). /health and /metrics say so. Redis
    restarted on its port (empty, as after a crash): the count is shared again at once, even by the
    facade that had not noticed it was gone (its pooled connection to the old Redis is dead)."""
    limits = f'redis_url = "{disposable_redis.url}"\nredis_timeout_ms = 1000\nfallback_share = 0.5'
    config = facade_toml(upstream.url, limits, team(6), workers=1)
    with running_together(support.facade(tmp_path, config), support.facade(tmp_path, config)) as (a, b):
        shared = [facade.chat("team") for facade in (a, b, a, b)]
        assert [answer.status_code for answer in shared] == [200] * 4
        assert shared[-1].headers["x-ratelimit-remaining-requests"] == "2"  # 6 - 4: both counted as one
        wait_until_settled(disposable_redis, "team")  # nothing of theirs still on its way to Redis

        disposable_redis.kill()
        assert [a.chat("team").status_code for _ in range(5)] == [200, 200, 200, 429, 429]
        health = a.limiter()
        assert (health["backend"], health["up"], health["on_redis_error"]) == ("redis", False, "fail_open")
        assert health["error"]  # what went wrong, for the operator
        assert a.limiter_up() == 0

        disposable_redis.start()  # empty: the count starts again
        support.wait_for(lambda: True if a.chat("team").status_code == 200 else None)  # a's own 3 are spent
        assert a.limiter() == {"backend": "redis", "up": True, "on_redis_error": "fail_open", "error": None}
        assert a.limiter_up() == 1
        again = [facade.chat("team") for facade in (b, a, b, a, b, a)]
        remaining = [answer.headers["x-ratelimit-remaining-requests"] for answer in again]
        assert remaining == ["4", "3", "2", "1", "0", "0"]  # 6 in all, the first above included
        assert [answer.status_code for answer in again] == [200] * 5 + [429]
        assert b.limiter()["up"] is True


def test_the_first_check_after_redis_restarts_is_answered_by_the_new_redis(disposable_redis: RedisServer) -> None:
    """The limiter's pooled connection to the Redis that was killed fails its next command (here on asyncio's
    own loop always; under uvloop when the request comes before the loop has seen the close). The limiter
    tries once more on a new connection, so the first request after a restart is not an outage of its own
    (with fail_closed, a 503)."""

    async def admit_before_and_after_a_restart() -> list[Decision]:
        limiter = RedisLimiter(disposable_redis.url, 1.0, "restart", lease_seconds=30)
        limits = Limits(requests_per_minute=10)
        try:
            before = await limiter.admit("caller:team", limits, 1, "1", time.time())
            disposable_redis.kill()
            disposable_redis.start()
            return [before, await limiter.admit("caller:team", limits, 1, "2", time.time())]
        finally:
            await limiter.aclose()

    decisions = asyncio.run(admit_before_and_after_a_restart())
    assert [(decision.allowed, decision.requests_remaining) for decision in decisions] == [(True, 9), (True, 9)]


def test_with_fail_closed_requests_get_503_limiter_unavailable_while_redis_is_down(
    tmp_path: Path, upstream: Upstream, disposable_redis: RedisServer
) -> None:
    limits = f'redis_url = "{disposable_redis.url}"\non_redis_error = "fail_closed"\nredis_retry_seconds = 0.2'
    config = facade_toml(upstream.url, limits, team(100), workers=1)
    with running_together(support.facade(tmp_path, config)) as (facade,):
        assert facade.chat("team").status_code == 200
        disposable_redis.kill()
        answer = facade.chat("team")
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "limiter_unavailable")
        assert answer.headers["retry-after"] == "1"
        assert facade.limiter()["up"] is False
        disposable_redis.start()
        assert support.wait_for(lambda: True if facade.chat("team").status_code == 200 else None)


def test_a_request_does_not_wait_for_a_slow_redis(
    tmp_path: Path, upstream: Upstream, disposable_redis: RedisServer
) -> None:
    """Redis busy for 2 s (DEBUG SLEEP): the request is answered, by the in-process fallback, while Redis
    is still asleep; the default redis_timeout_ms (50) is all it waited."""
    config = facade_toml(upstream.url, f'redis_url = "{disposable_redis.url}"', team(100), workers=1)
    with running_together(support.facade(tmp_path, config)) as (facade,), disposable_redis.client() as sleeper:
        assert facade.chat("team").status_code == 200
        wait_until_settled(disposable_redis, "team")  # so that the next call to Redis is the request's
        asleep = threading.Thread(target=sleeper.execute_command, args=("DEBUG", "SLEEP", "2"))
        asleep.start()
        support.wait_for(lambda: None if disposable_redis.answers_ping(timeout=0.1) else True)
        answer = facade.chat("team")
        assert asleep.is_alive(), "Redis woke up before the facade answered: the request waited for it"
        assert answer.status_code == 200
        assert facade.limiter()["error"].startswith("TimeoutError")
        asleep.join(10)


def test_while_redis_hangs_requests_do_not_try_it_again_within_redis_retry_seconds(
    tmp_path: Path, upstream: Upstream, disposable_redis: RedisServer
) -> None:
    """Redis killed and its port taken by a listener that never answers: every try now costs a connection
    and a timeout. A facade with redis_retry_seconds = 60 tries once in five requests; one that retries
    after 1 ms tries on each (so the count is the facade's doing, not the client library's)."""
    patient, eager = (
        support.facade(tmp_path, facade_toml(upstream.url, limits, team(1000), workers=1))
        for limits in (
            f'redis_url = "{disposable_redis.url}"\nredis_timeout_ms = 200\nredis_retry_seconds = 60',
            f'redis_url = "{disposable_redis.url}"\nredis_timeout_ms = 200\nredis_retry_seconds = 0.001',
        )
    )
    with running_together(patient, eager) as facades:
        assert [facade.chat("team").status_code for facade in facades] == [200, 200]
        wait_until_settled(disposable_redis, "team")  # no settle left to try Redis after the kill
        disposable_redis.kill()
        with HungRedis(disposable_redis.port).running() as hung:
            assert [facades[0].chat("team").status_code for _ in range(5)] == [200] * 5
            tried_by_patient = hung.connections
            assert [facades[1].chat("team").status_code for _ in range(5)] == [200] * 5
            tried_by_eager = hung.connections - tried_by_patient
        assert (tried_by_patient, tried_by_eager) == (1, 5)
        assert [facade.limiter_up() for facade in facades] == [0, 0]
