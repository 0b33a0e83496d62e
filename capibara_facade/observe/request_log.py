"""The request log: one JSON line per finished request, on stdout or appended to a file.

Each line is encoded by msgspec and written with one `write()` call on the file descriptor: no logging
machinery on the hot path (stdlib logging cost about three times as much per request, measured with py-spy
under `make bench`), and with several workers on one file (`O_APPEND`) or one pipe each line arrives whole,
never interleaved with another worker's. It names what happened, never what was said: no message contents,
no keys, no client address.
"""

from __future__ import annotations

import contextlib
import os
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
    # Who called: a configured caller's name, "public" (no key), or null (refused before authentication).
    caller: str | None = None
    # The limit that refused the request with 429 (requests, tokens, too_large, concurrent, daily).
    limited: str | None = None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class RequestLog:
    def __init__(self, path: str | None) -> None:
        if path:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._owned = True
        else:
            sys.stdout.flush()  # whatever was printed before goes first
            self._fd, self._owned = sys.stdout.fileno(), False
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
            caller=record.caller,
            limited=record.limited,
        )
        with contextlib.suppress(OSError):  # a closed or full stdout must not fail the request it describes
            os.write(self._fd, self._encode(line) + b"\n")

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
