"""One record per request: what every stage learnt about it, finished once, at the end, by the accounting.

The stages of the request path write into it as they go (the route resolved, the upstream answered, the
first token streamed, the usage chunk arrived, the client left); `Observer.account()` reads it once to update
the metrics and write the request log line. No stage keeps its own bookkeeping.

Times are `time.perf_counter()` readings; `None` means the stage was never reached.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..catalog import Route
from ..errors import FacadeError, RateLimited, UpstreamError
from .usage import Usage

if TYPE_CHECKING:
    from ..callers.limiter import Admission
    from ..store.capture import Capture

__all__ = ["Outcome", "RequestRecord"]


class Outcome:
    """How a request ended, as the request log and metrics name it."""

    COMPLETED = "completed"
    CLIENT_GONE = "client_gone"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    REJECTED = "rejected"  # refused by the facade itself: bad request, unknown model, bad key, too large
    ERROR = "error"  # the facade's own failure (a bug; logged with its traceback)


class RequestRecord:
    __slots__ = (
        "admission",
        "bytes_out",
        "caller",
        "capture",
        "completion_tokens",
        "disconnect_phase",
        "finished_at",
        "first_token_at",
        "limited",
        "model",
        "outcome",
        "output_events",
        "prompt_tokens",
        "received_at",
        "request_id",
        "route",
        "served_by",
        "span",
        "status",
        "stream",
        "upstream",
        "upstream_answered_at",
        "upstream_error",
        "upstream_model",
        "upstream_sent_at",
        "upstream_traceparent",
        "upstream_wait",
        "usage_from_events",
    )

    def __init__(self, route: str, request_id: str) -> None:
        self.route = route
        self.request_id = request_id
        self.received_at = time.perf_counter()
        self.caller: str | None = None  # the caller's name ("public" without a key), once authenticated
        self.admission: Admission | None = None  # what the limiter reserved, settled by the accounting
        self.limited: str | None = None  # the limit that refused the request (requests, tokens, daily, ...)
        self.model: str | None = None  # the model the client asked for, once the body is read
        self.upstream: str | None = None
        self.upstream_model: str | None = None
        self.served_by: str | None = None  # the public model whose target answered (a fallback's, or the model's)
        self.stream = False
        self.status = 0
        self.outcome = Outcome.COMPLETED
        self.upstream_sent_at: float | None = None  # the upstream request was sent
        self.upstream_answered_at: float | None = None  # its status and headers arrived
        self.upstream_wait = 0.0  # seconds spent waiting on the upstream: for its answer, and for each read
        self.first_token_at: float | None = None  # the first event carrying generated output was relayed
        self.finished_at: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.usage_from_events = False  # completion_tokens counted from relayed events (an abandoned stream)
        self.output_events = 0  # `data:` events relayed from the first token on
        self.bytes_out = 0
        self.upstream_error: str | None = None  # connect, timeout, status_5xx, broke_off, ...
        self.disconnect_phase: str | None = None  # before_answer, waiting, streaming
        self.span: object | None = None  # the OpenTelemetry span, when tracing is on
        self.upstream_traceparent: bytes | None = None  # the W3C traceparent the upstream gets
        self.capture: Capture | None = None  # the answer, caught for [store] (a chat completion to store)

    def asked(self, model: str, stream: bool) -> None:
        """What the client asked for (a model name that may not exist: the metrics count it as "other")."""
        self.model, self.stream = model, stream

    def resolved(self, route: Route) -> None:
        """The target an attempt goes to (the last attempt's is what the record keeps)."""
        self.upstream, self.upstream_model, self.served_by = route.upstream, route.upstream_model, route.public_name

    def took_usage(self, usage: Usage) -> None:
        self.prompt_tokens, self.completion_tokens = usage.prompt_tokens, usage.completion_tokens

    def upstream_failed(self, kind: str) -> None:
        self.upstream_error = kind
        self.outcome = Outcome.TIMEOUT if kind == "timeout" else Outcome.UPSTREAM_ERROR

    def refused(self, error: FacadeError) -> None:
        """The request ended in one of the facade's own error answers."""
        if isinstance(error, UpstreamError):
            self.upstream_failed(error.failure)
        else:
            self.outcome = Outcome.REJECTED
            if isinstance(error, RateLimited):
                self.limited = error.limit

    def client_left(self, streaming: bool) -> None:
        self.outcome = Outcome.CLIENT_GONE
        if streaming:
            self.disconnect_phase = "streaming"
        else:
            self.disconnect_phase = "waiting" if self.upstream_sent_at is not None else "before_answer"

    def finish(self, status: int, bytes_out: int) -> None:
        self.finished_at = time.perf_counter()
        self.status = status
        self.bytes_out = bytes_out
        if self.completion_tokens is None and self.outcome == Outcome.CLIENT_GONE and self.output_events:
            # What was generated until the client left: one token per event on vLLM and llama.cpp.
            self.completion_tokens = self.output_events
            self.usage_from_events = True

    def server_timing(self) -> tuple[bytes, bytes]:
        """The `Server-Timing` header (browser DevTools shows where the time went): the upstream's part and
        the facade's for a whole answer; for a stream, the upstream's time to its first byte."""
        if self.upstream_sent_at is None or self.upstream_answered_at is None:
            return (b"server-timing", b"facade;dur=%.1f" % ((time.perf_counter() - self.received_at) * 1000))
        if self.stream:
            return (
                b"server-timing",
                b"upstream;dur=%.1f" % ((self.upstream_answered_at - self.upstream_sent_at) * 1000),
            )
        facade = time.perf_counter() - self.received_at - self.upstream_wait
        return (b"server-timing", b"upstream;dur=%.1f, facade;dur=%.1f" % (self.upstream_wait * 1000, facade * 1000))

    # --- what the observers read -----------------------------------------------------------------------

    def tokens_used(self, prompt_estimate: int, reserved: int) -> int:
        """Tokens the request cost, for the limiter's settle: the reported usage (the prompt estimated if only
        the completion is known, as for an abandoned stream); nothing when it never reached a model server or
        the server refused it; else, its usage unknown (the client left or the upstream timed out while it was
        generating), all that was reserved: the work may well have been done."""
        if self.prompt_tokens is not None or self.completion_tokens is not None:
            prompt = self.prompt_tokens if self.prompt_tokens is not None else prompt_estimate
            return prompt + (self.completion_tokens or 0)
        if self.upstream_sent_at is None:
            return 0
        if self.upstream_answered_at is not None and self.status >= 400 and self.outcome != Outcome.CLIENT_GONE:
            return 0  # the model server answered with an error: nothing was generated
        return reserved

    @property
    def duration(self) -> float:
        return (self.finished_at or time.perf_counter()) - self.received_at

    @property
    def overhead(self) -> float | None:
        """Time the facade itself took: all of the request's time but what it spent waiting on the upstream
        (for a stream, relaying included; a client too slow to take the events counts here too)."""
        return None if self.upstream_sent_at is None else self.duration - self.upstream_wait

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.received_at
