"""Relaying an upstream's Server-Sent Events to the client, event by event, bytes untouched.

Each read from the upstream is forwarded at once. The only bytes ever held back are the tail of an
event the upstream has not finished writing: a client cannot use half an event, and if the upstream dies
right there, the client must get a well-formed error event, not one glued onto half a JSON object. That
tail is bounded (`max_event_bytes`): an upstream that never ends its event ends the stream with an error
event instead of growing the facade's memory, and the search for event ends only ever looks at new bytes,
so the relay's cost is linear in what it forwards.

Frames are otherwise never split, merged, re-ordered or re-serialised: role-only deltas, tool-call
fragments and `: ping` comments reach the client exactly as the upstream wrote them. Three documented
exceptions, each touching only the events concerned (tested byte for byte in tests/unit/test_sse.py):

- the usage-only chunk (`"choices": []` with `usage`) is dropped when the facade asked the upstream for
  it and the client did not (OpenAI sends it only to clients that set `stream_options.include_usage`);
- an error event from the upstream is replaced by the facade's own (model servers put file paths there);
- a route with `response_model = "alias"` renames `model` in each chunk.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncGenerator

import httpx
import msgspec

from ..errors import envelope
from ..observe.record import RequestRecord
from ..observe.usage import Usage
from ..wire import rename_model
from .forward import body_stream

__all__ = ["HEADERS", "SHUTDOWN_EVENT", "error_event", "relay"]

log = logging.getLogger(__name__)

# Fit for SSE behind proxies: no caching, and nginx must not buffer (X-Accel-Buffering).
HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_TERMINATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")
_LONGEST_TERMINATOR = 4
_EVENTS = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r)", re.DOTALL)
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# An event carrying generated output (the role-only first delta has `"content": ""`): its relay is the TTFT.
_FIRST_OUTPUT = re.compile(
    rb'"(?:content|reasoning_content|reasoning|refusal)"\s*:\s*"(?!")|"tool_calls"\s*:\s*\[\s*\{'
)
# A usage object (OpenAI sends `"usage": null` in every chunk of a stream that asked for it) or an error.
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ERROR = re.compile(rb'"error"\s*:')


def error_event(message: str, type: str = "upstream_error", code: str | None = "upstream_error") -> bytes:
    """A mid-stream failure in OpenAI's error shape; the openai SDK raises it as `APIError`."""
    return b"data: " + envelope(message, type, None, code) + b"\n\n"


SHUTDOWN_EVENT = error_event("The server is shutting down; retry the request.", "server_error", "server_shutdown")


class _ChunkView(msgspec.Struct):
    """What the relay reads of a `data:` payload, only when a cheap test says it may matter (an absent
    `error` stays an empty `Raw`; a JSON null is `Raw(b"null")`)."""

    choices: list[msgspec.Raw] | None = None
    usage: Usage | None = None
    error: msgspec.Raw = msgspec.Raw()


_NULL = msgspec.Raw(b"null")


class _ErrorView(msgspec.Struct):
    type: object = None
    code: object = None


_chunk_decoder = msgspec.json.Decoder(_ChunkView)
_error_decoder = msgspec.json.Decoder(_ErrorView)


async def relay(
    response: httpx.Response,
    upstream_name: str,
    record: RequestRecord,
    *,
    rename_to: str | None = None,
    hide_usage_chunk: bool = False,
    max_event_bytes: int = 1024 * 1024,
) -> AsyncGenerator[bytes, None]:
    """The upstream's stream as complete events, as they arrive; an error event if the upstream breaks off.

    `hide_usage_chunk`: the facade asked for usage and the client did not, so the usage-only chunk is dropped.
    What the stream tells about the request (first token, usage, failures, time waiting) goes into `record`.
    """
    events = _Events(upstream_name, record, rename_to, hide_usage_chunk)
    pending = bytearray()
    clock = time.perf_counter
    try:
        waiting_since = clock()
        async for chunk in body_stream(response):
            record.upstream_wait += clock() - waiting_since
            if pending:
                searched_from = max(0, len(pending) - _LONGEST_TERMINATOR + 1)  # a terminator may straddle reads
                pending += chunk
                end = _complete_events_end(pending, searched_from)
                complete = bytes(pending[:end])
                del pending[:end]
            else:  # the common case: nothing held back, and the read ends with its event
                end = _complete_events_end(chunk, 0)
                complete = chunk[:end]  # the very same object when the whole read is complete events
                if end < len(chunk):
                    pending += chunk[end:]
            if complete and (out := events.filtered(complete)):
                yield out
            if len(pending) > max_event_bytes:
                log.warning("upstream %s sent an event over %d bytes; stream ended", upstream_name, max_event_bytes)
                record.upstream_failed("event_too_large")
                yield error_event(f"The upstream {upstream_name!r} sent an event larger than the facade accepts.")
                return
            waiting_since = clock()
    except httpx.HTTPError as exc:
        log.warning("upstream %s broke off mid-stream: %s: %s", upstream_name, type(exc).__name__, exc)
        timed_out = isinstance(exc, httpx.TimeoutException)
        record.upstream_failed("timeout" if timed_out else "broke_off")
        kind = "timed out" if timed_out else "broke off"
        yield error_event(f"The upstream {upstream_name!r} {kind} in the middle of the stream.")
        return
    # The upstream ended without terminating its last event: pass the bytes on as they are.
    if pending and (out := events.filtered(bytes(pending))):
        yield out


def _complete_events_end(data: bytes | bytearray, searched_from: int) -> int:
    """Length of the longest prefix of `data` that ends with an event terminator (0 when there is none);
    terminators are looked for from `searched_from` on, so bytes already searched are not searched again."""
    end = 0
    for terminator in _TERMINATORS:
        found = data.rfind(terminator, searched_from)
        if found >= 0:
            end = max(end, found + len(terminator))
    return end


class _Events:
    """The per-event work of one stream; events that need no change are passed on as the very same bytes."""

    __slots__ = ("hide_usage_chunk", "record", "rename_to", "upstream_name")

    def __init__(self, upstream_name: str, record: RequestRecord, rename_to: str | None, hide_usage: bool) -> None:
        self.upstream_name = upstream_name
        self.record = record
        self.rename_to = rename_to
        self.hide_usage_chunk = hide_usage

    def filtered(self, events: bytes) -> bytes:
        """`events` (whole events, or the unterminated tail at the end) with the documented changes applied."""
        record = self.record
        if record.first_token_at is not None:
            record.output_events += events.count(b"data:")
        elif first := _FIRST_OUTPUT.search(events):
            record.first_token_at = time.perf_counter()
            record.output_events += events.count(b"data:", events.rfind(b"data:", 0, first.start()))
        # Substring tests first: in the common case they say no event needs to be looked at.
        if not (
            self.rename_to
            or (b'"error"' in events and _ERROR.search(events))
            or (b'"usage"' in events and _USAGE.search(events))
        ):
            return events
        parts = _EVENTS.findall(events)
        tail = events[sum(map(len, parts)) :]
        if tail:
            parts.append(tail)
        return b"".join([self._event(part) for part in parts])

    def _event(self, event: bytes) -> bytes:
        if _ERROR.search(event) or _USAGE.search(event):
            data = b"\n".join([_data_value(line) for line in event.splitlines() if line.startswith(b"data:")])
            try:
                view = _chunk_decoder.decode(data)
            except (msgspec.DecodeError, RecursionError):
                view = None
            if view is not None and view.error and view.error != _NULL:
                self.record.upstream_failed("error_event")
                return self._sanitised(view.error, len(event))
            if view is not None and view.usage is not None:
                self.record.took_usage(view.usage)
                if self.hide_usage_chunk and view.choices == []:
                    return b""
        return _renamed(event, self.rename_to) if self.rename_to else event

    def _sanitised(self, error: msgspec.Raw, size: int) -> bytes:
        """The upstream's error event replaced by the facade's: its message can carry paths and tracebacks."""
        try:
            view = _error_decoder.decode(error)
            kind, code = _identifier(view.type), _identifier(view.code)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            kind = code = "?"
        log.warning(
            "upstream %s sent an error event mid-stream (type %s, code %s, %d bytes); replaced",
            self.upstream_name,
            kind,
            code,
            size,
        )
        return error_event(f"The upstream {self.upstream_name!r} reported an error in the middle of the stream.")


def _data_value(line: bytes) -> bytes:
    """The value of an SSE `data:` line (one optional space after the colon is not part of it)."""
    return line[6:] if line.startswith(b"data: ") else line[5:]


def _identifier(value: object) -> str:
    """A short identifier from the upstream, fit for a log line; anything else (text, secrets) as '?'."""
    text = str(value) if isinstance(value, str | int) else ""
    return text if _IDENTIFIER.fullmatch(text) else "?"


def _renamed(events: bytes, public_name: str) -> bytes:
    """`events` with `model` renamed in each JSON `data:` line; every other byte, line endings included, kept."""
    lines = events.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith(b"data:") and b'"model"' in line:
            content = line.rstrip(b"\r\n")
            payload = content[5:].lstrip(b" ")
            renamed = rename_model(payload, public_name)
            if renamed is not payload:
                lines[index] = content[: len(content) - len(payload)] + renamed + line[len(content) :]
    return b"".join(lines)
