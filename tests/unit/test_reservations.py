"""What a request is charged when its usage is unknown, and what a refused reload says about a secret."""

from __future__ import annotations

import time

import msgspec

from capibara_facade.config import LimitsConfig
from capibara_facade.gateway import _changed_keys
from capibara_facade.observe.record import Outcome, RequestRecord

PROMPT, RESERVED = 40, 440


def _record(*, sent: bool, answered: bool, status: int, outcome: str = Outcome.COMPLETED) -> RequestRecord:
    record = RequestRecord("chat", "id")
    record.upstream_sent_at = time.perf_counter() if sent else None
    record.upstream_answered_at = time.perf_counter() if answered else None
    record.status, record.outcome = status, outcome
    return record


def test_a_request_that_never_reached_a_model_server_costs_nothing() -> None:
    assert _record(sent=False, answered=False, status=503).tokens_used(PROMPT, RESERVED) == 0


def test_a_model_servers_error_answer_costs_nothing() -> None:
    assert _record(sent=True, answered=True, status=400).tokens_used(PROMPT, RESERVED) == 0


def test_a_client_that_leaves_while_the_answer_is_generated_is_charged_the_reservation() -> None:
    """Else leaving before the answer would make every request free: the GPU did the work anyway."""
    record = _record(sent=True, answered=False, status=0, outcome=Outcome.CLIENT_GONE)
    assert record.tokens_used(PROMPT, RESERVED) == RESERVED


def test_a_timed_out_answer_is_charged_the_reservation() -> None:
    record = _record(sent=True, answered=False, status=504, outcome=Outcome.TIMEOUT)
    assert record.tokens_used(PROMPT, RESERVED) == RESERVED


def test_reported_usage_is_what_is_charged() -> None:
    record = _record(sent=True, answered=True, status=200)
    record.prompt_tokens, record.completion_tokens = 12, 30
    assert record.tokens_used(PROMPT, RESERVED) == 42


def test_a_refused_reload_names_a_changed_redis_url_without_showing_it() -> None:
    old = LimitsConfig(redis_url="redis://:old-secret@10.0.0.9:6379/0")
    new = msgspec.structs.replace(old, redis_url="redis://:new-secret@10.0.0.9:6379/0", redis_timeout_ms=20.0)
    message = _changed_keys("limits", old, new)
    assert "limits.redis_url (changed)" in message
    assert "limits.redis_timeout_ms (50.0 -> 20.0)" in message
    assert "secret" not in message
