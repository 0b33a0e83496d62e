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

The Responses API streams typed events (`event: response.output_text.delta` and its data, no `[DONE]`):
`typed_events=True` relays them as they are too, reads the usage from `response.completed` (or
`response.incomplete` / `response.failed`), the response's id from `response.created`, counts the first
`*.delta` event as the first token, and never touches usage chunks (it has none). Its `error` events are
replaced as above, and `model` renamed inside each event's `response` object.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncGenerator, Callable
from typing import ClassVar

import httpx
import msgspec

from ..errors import envelope
from ..observe.record import RequestRecord
from ..observe.usage import ResponseUsage, Usage
from ..wire import rename_model, rename_response_model
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
# Typed events (the Responses API): a `*.delta` carries output; those with a `response` object or of type
# `error` are looked at.
_TYPED_OUTPUT = re.compile(rb'"type"\s*:\s*"response\.[a-z_.]*?\.delta"')
_TYPED_OUTPUT_MARK = b'.delta"'
_TYPED_NOTABLE = re.compile(rb'"response"\s*:\s*\{|"type"\s*:\s*"error"')


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


class _ResponseView(msgspec.Struct):
    id: str | None = None
    usage: ResponseUsage | None = None


class _TypedView(msgspec.Struct):
    """What the relay reads of a typed event's data."""

    type: str = ""
    response: _ResponseView | None = None
    code: object = None


_chunk_decoder = msgspec.json.Decoder(_ChunkView)
_error_decoder = msgspec.json.Decoder(_ErrorView)
_typed_decoder = msgspec.json.Decoder(_TypedView)


async def relay(
    response: httpx.Response,
    upstream_name: str,
    record: RequestRecord,
    *,
    rename_to: str | None = None,
    hide_usage_chunk: bool = False,
    max_event_bytes: int = 1024 * 1024,
    typed_events: bool = False,
    on_response_id: Callable[[str], None] | None = None,
    collect: Callable[[bytes], None] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The upstream's stream as complete events, as they arrive; an error event if the upstream breaks off.

    `hide_usage_chunk`: the facade asked for usage and the client did not, so the usage-only chunk is dropped.
    `typed_events`: the Responses API's stream; `on_response_id` is told the id its `response.created` names.
    `collect` is handed every piece the client gets, as it gets it (a stream to be stored).
    What the stream tells about the request (first token, usage, failures, time waiting) goes into `record`.
    """
    events: _Events = (
        _TypedEvents(upstream_name, record, rename_to, on_response_id)
        if typed_events
        else _ChatEvents(upstream_name, record, rename_to, hide_usage_chunk)
    )
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
                if collect is not None:
                    collect(out)
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
        if collect is not None:
            collect(out)
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
    """The per-event work of one stream; events that need no change are passed on as the very same bytes.
    What differs between chat-style chunks and typed events is in the two subclasses."""

    __slots__ = ("record", "rename_to", "upstream_name")
    first_output: ClassVar[re.Pattern[bytes]]  # an event that carries generated output: its relay is the TTFT

    def __init__(self, upstream_name: str, record: RequestRecord, rename_to: str | None) -> None:
        self.upstream_name = upstream_name
        self.record = record
        self.rename_to = rename_to

    def filtered(self, events: bytes) -> bytes:
        """`events` (whole events, or the unterminated tail at the end) with the documented changes applied."""
        record = self.record
        if record.first_token_at is not None:
            record.output_events += self._outputs(events, 0)
        elif first := self.first_output.search(events):
            record.first_token_at = time.perf_counter()
            record.output_events += self._outputs(events, first.start())
        # A cheap test first: in the common case it says no event needs to be looked at.
        if not (self.rename_to or self._notable(events)):
            return events
        parts = _EVENTS.findall(events)
        tail = events[sum(map(len, parts)) :]
        if tail:
            parts.append(tail)
        return b"".join([self._event(part) for part in parts])

    def _outputs(self, events: bytes, first: int) -> int:
        """How many output events `events` holds from the one the match at `first` is in."""
        raise NotImplementedError

    def _notable(self, events: bytes) -> bool:
        raise NotImplementedError

    def _event(self, event: bytes) -> bytes:
        raise NotImplementedError

    def _sanitised(self, error: msgspec.Raw | bytes, size: int) -> bytes:
        """The upstream's error event replaced by the facade's: its message can carry paths and tracebacks."""
        self.record.upstream_failed("error_event")
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


class _ChatEvents(_Events):
    """Chat completion (and completion) chunks: `data:` lines, each chunk an output event, `[DONE]` last."""

    __slots__ = ("hide_usage_chunk",)
    first_output = _FIRST_OUTPUT

    def __init__(self, upstream_name: str, record: RequestRecord, rename_to: str | None, hide_usage: bool) -> None:
        super().__init__(upstream_name, record, rename_to)
        self.hide_usage_chunk = hide_usage

    def _outputs(self, events: bytes, first: int) -> int:
        return events.count(b"data:", events.rfind(b"data:", 0, first)) if first else events.count(b"data:")

    def _notable(self, events: bytes) -> bool:
        return (b'"error"' in events and _ERROR.search(events) is not None) or (
            b'"usage"' in events and _USAGE.search(events) is not None
        )

    def _event(self, event: bytes) -> bytes:
        if _ERROR.search(event) or _USAGE.search(event):
            try:
                view = _chunk_decoder.decode(_data(event))
            except (msgspec.DecodeError, RecursionError):
                view = None
            if view is not None and view.error and view.error != _NULL:
                return self._sanitised(view.error, len(event))
            if view is not None and view.usage is not None:
                self.record.took_usage(view.usage)
                if self.hide_usage_chunk and view.choices == []:
                    return b""
        return _renamed(event, rename_model, self.rename_to) if self.rename_to else event


class _TypedEvents(_Events):
    """The Responses API's typed events: `event: <type>` and a data object whose `type` says the same."""

    __slots__ = ("on_response_id",)
    first_output = _TYPED_OUTPUT

    def __init__(
        self,
        upstream_name: str,
        record: RequestRecord,
        rename_to: str | None,
        on_response_id: Callable[[str], None] | None,
    ) -> None:
        super().__init__(upstream_name, record, rename_to)
        self.on_response_id = on_response_id

    def _outputs(self, events: bytes, first: int) -> int:
        return events.count(_TYPED_OUTPUT_MARK, first)

    def _notable(self, events: bytes) -> bool:
        return (b'"response"' in events or b'"error"' in events) and _TYPED_NOTABLE.search(events) is not None

    def _event(self, event: bytes) -> bytes:
        if _TYPED_NOTABLE.search(event):
            data = _data(event)
            try:
                view = _typed_decoder.decode(data)
            except (msgspec.DecodeError, RecursionError):
                view = None
            if view is not None and view.type == "error":
                return self._sanitised(data, len(event))
            if view is not None and view.response is not None:
                response = view.response
                if response.usage is not None:
                    self.record.took_usage(response.usage.as_usage())
                if view.type == "response.failed":  # its response.error.message is the upstream's own text
                    return self._sanitised(data, len(event))
                if view.type == "response.created" and response.id and self.on_response_id is not None:
                    self.on_response_id(response.id)
        return _renamed(event, rename_response_model, self.rename_to) if self.rename_to else event


def _data(event: bytes) -> bytes:
    """The data of an SSE event: its `data:` lines' values, joined."""
    return b"\n".join([_data_value(line) for line in event.splitlines() if line.startswith(b"data:")])


def _data_value(line: bytes) -> bytes:
    """The value of an SSE `data:` line (one optional space after the colon is not part of it)."""
    return line[6:] if line.startswith(b"data: ") else line[5:]


def _identifier(value: object) -> str:
    """A short identifier from the upstream, fit for a log line; anything else (text, secrets) as '?'."""
    text = str(value) if isinstance(value, str | int) else ""
    return text if _IDENTIFIER.fullmatch(text) else "?"


def _renamed(events: bytes, rename: Callable[[bytes, str], bytes], public_name: str) -> bytes:
    """`events` with `model` renamed (by `rename`) in each JSON `data:` line; every other byte, line endings
    included, kept."""
    lines = events.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith(b"data:") and b'"model"' in line:
            content = line.rstrip(b"\r\n")
            payload = content[5:].lstrip(b" ")
            renamed = rename(payload, public_name)
            if renamed is not payload:
                lines[index] = content[: len(content) - len(payload)] + renamed + line[len(content) :]
    return b"".join(lines)
