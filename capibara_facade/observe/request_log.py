"""The request log: one JSON line per finished request, on stdout or in a file.

It goes through stdlib logging (logger `capibara_facade.requests`, INFO, not propagated), so an operator
can route it elsewhere with logging's own means; the line itself is encoded by msgspec in one call. It names
what happened, never what was said: no message contents, no keys, no client address.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from .record import RequestRecord

__all__ = ["LogLine", "RequestLog"]


class LogLine(msgspec.Struct, omit_defaults=False):
    ts: str
    request_id: str
    route: str
    model: str | None
    upstream: str | None
    upstream_model: str | None
    status: int
    stream: bool
    ttft_ms: float | None
    duration_ms: float
    overhead_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    bytes_out: int
    outcome: str
    # "upstream" (its usage report), "events" (an abandoned stream: one token per relayed event), or null.
    usage_source: str | None = None
    upstream_error: str | None = None
    disconnect_phase: str | None = None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class RequestLog:
    def __init__(self, path: str | None) -> None:
        self._logger = logging.getLogger("capibara_facade.requests")
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        handler = logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        self._logger.addHandler(handler)
        self._encode = msgspec.json.Encoder().encode

    def write(self, record: RequestRecord) -> None:
        now = time.time()
        line = LogLine(
            ts=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            request_id=record.request_id,
            route=record.route,
            model=record.model,
            upstream=record.upstream,
            upstream_model=record.upstream_model,
            status=record.status,
            stream=record.stream,
            ttft_ms=_ms(record.ttft),
            duration_ms=round(record.duration * 1000, 3),
            overhead_ms=_ms(record.overhead),
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            bytes_out=record.bytes_out,
            outcome=record.outcome,
            usage_source=None
            if record.completion_tokens is None
            else ("events" if record.usage_from_events else "upstream"),
            upstream_error=record.upstream_error,
            disconnect_phase=record.disconnect_phase,
        )
        self._logger.info(self._encode(line).decode())

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
