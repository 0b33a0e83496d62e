"""Limits for a server facing the internet with nothing in front of it, enforced inside uvicorn.

uvicorn on httptools enforces none of them: a request head of any size is buffered (and httptools joins a
header that spans several reads by copying it whole each time, so one client sending a 128 MiB header stalls
every other one), and a connection that sends nothing, or its head or body a byte at a time, is kept forever.
`LimitedHttpToolsProtocol` is uvicorn's own protocol with these checks, all made before any work is done:

    request URL over max_url_bytes                              414  ┐ OpenAI's error envelope with
    request head (URL + headers) over max_header_bytes          431  │ `Connection: close`; the
    head incomplete header_timeout_seconds after its first byte 408  │ connection is closed and
    body silent for body_timeout_seconds, or averaging under    408  │ nothing more is read
      body_min_bytes_per_second once it has taken that long          ┘
    nothing sent keepalive_timeout_seconds after connecting,      -  closed (uvicorn's keep-alive timer,
      or after the last response                                     armed at connect as well)
    a new connection while max_connections are open             503  and closed; one warning per burst

Cost on the hot path: a few counters per read and per request. A request that arrives in one read gets no
timer; a head or body spread over several reads gets one `call_later` handle, cancelled when it is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ..config import ServerConfig
from ..errors import envelope

__all__ = ["LimitedConfig", "LimitedHttpToolsProtocol", "ServerLimits", "raise_open_files_limit"]

log = logging.getLogger(__name__)

# The connection-cap warning repeats at most this often while connections keep being refused.
_CAP_WARNING_INTERVAL_SECONDS = 60.0
# Open files a process needs besides its connections: the listening socket, logs, the event loop's own.
_RESERVED_FILES = 64


class ServerLimits:
    """The [server] limits every connection of one process checks, and that process's connection-cap warning."""

    __slots__ = (
        "body_min_rate",
        "body_timeout",
        "header_timeout",
        "max_connections",
        "max_header_bytes",
        "max_url_bytes",
        "refused",
        "warn_after",
    )

    def __init__(self, server: ServerConfig) -> None:
        self.max_url_bytes = server.max_url_bytes
        self.max_header_bytes = server.max_header_bytes
        self.header_timeout = server.header_timeout_seconds
        self.body_timeout = server.body_timeout_seconds
        self.body_min_rate = server.body_min_bytes_per_second
        self.max_connections = server.max_connections
        self.refused = 0  # connections refused since the last warning
        self.warn_after = 0.0  # time.monotonic() before which a refusal is not logged again

    def connection_refused(self) -> None:
        """Count a connection refused at the cap: warn at the first of a burst, then at most once a minute."""
        self.refused += 1
        now = time.monotonic()
        if now >= self.warn_after:
            log.warning(
                "server.max_connections reached: %d client connections are open in this process; new ones are "
                "answered 503 and closed (%d refused since the last such warning, repeated at most every %d s)",
                self.max_connections,
                self.refused,
                _CAP_WARNING_INTERVAL_SECONDS,
            )
            self.refused = 0
            self.warn_after = now + _CAP_WARNING_INTERVAL_SECONDS


class LimitedConfig(uvicorn.Config):
    """uvicorn's Config serving HTTP with `LimitedHttpToolsProtocol` and carrying its limits: every connection
    reads them here, and worker processes, which get the Config pickled, get the limits with it."""

    def __init__(self, app: Any, limits: ServerLimits, **options: Any) -> None:
        super().__init__(app, http=LimitedHttpToolsProtocol, **options)
        self.limits = limits


class _Refused(Exception):
    """Raised in a parser callback to stop httptools at once; the request is answered `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, counting what each connection sends and timing how long it takes."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, LimitedConfig):
            raise TypeError("LimitedHttpToolsProtocol needs its limits: serve with server_limits.LimitedConfig")
        self.limits = config.limits
        self.url = b""  # uvicorn sets it when a request begins; a flood of blank lines never begins one
        # Bytes read since the last head was complete, not counting bodies: nonzero while a head is arriving.
        # (A head that starts in the read that ends a body is counted from the next read.)
        self._head_read = 0
        self._reading_body = False
        self._body_bytes = 0
        self._body_started_at = 0.0  # loop times
        self._body_read_at = 0.0
        self._read_timer: asyncio.TimerHandle | None = None  # the head's or the body's deadline

    # --- connection ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport  # all that uvicorn's connection_lost needs of a connection never served
            message = "The server has too many open connections; retry shortly."
            transport.write(self._error_response(503, message, "server_error"))
            transport.close()
            self.limits.connection_refused()
            return
        super().connection_made(transport)
        self._arm_idle_timer()  # a connection that never sends is closed too

    def _arm_idle_timer(self) -> None:
        """uvicorn's keep-alive timer, which uvicorn itself arms only when it has sent an answer."""
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_timer is not None:
            self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the head's bytes counted before parsing and the read timers armed after.
        self._unset_keepalive_if_required()
        if not self._reading_body:
            self._head_read += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _Refused):
                self._refuse(error.__context__.status)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()  # the connection belongs to the WebSocket protocol now
                return
            self._unsupported_upgrade_warning()
        if self._reading_body:  # counted whole: the read that completed the head is counted as body too
            self._body_bytes += len(data)
            self._body_read_at = now = self.loop.time()
            if self._read_timer is None:
                self._body_started_at = now
                self._read_timer = self.loop.call_later(self.limits.body_timeout, self._check_body)
        elif self._head_read:
            if self._head_read > self.limits.max_header_bytes:  # still incomplete, and too large already
                self._refuse(414 if len(self.url) > self.limits.max_url_bytes else 431)
            elif self._read_timer is None:  # the head's deadline counts from its first read
                self._read_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    # --- parser callbacks (httptools calls on_headers_complete when the head is parsed, before the body) --------

    def on_headers_complete(self) -> None:
        if self._read_timer is not None:
            self._cancel_read_timer()
        limits = self.limits
        if len(self.url) > limits.max_url_bytes:
            raise _Refused(414)
        # Bytes read bound the head's size from above; measure it only when that bound is over the limit.
        if self._head_read > limits.max_header_bytes and self._head_size() > limits.max_header_bytes:
            raise _Refused(431)
        self._head_read = 0
        self._reading_body = True
        self._body_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._read_timer is not None:
            self._cancel_read_timer()
        self._reading_body = False
        super().on_message_complete()
        if self.cycle.response_complete:
            # Answered before its body ended (a 413, a 404): idle from here on, but the body's reads have
            # cancelled the keep-alive timer uvicorn armed at the answer.
            self._arm_idle_timer()

    def _head_size(self) -> int:
        """The request head as sent: the URL and every `name: value` line (method and version left out)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # --- deadlines -------------------------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._read_timer = None
        self._refuse(408)

    def _check_body(self) -> None:
        """Runs body_timeout after the body's last read: a silence that long, or too low a rate, is a 408."""
        self._read_timer = None
        limits = self.limits
        now = self.loop.time()
        if self.flow.read_paused:  # uvicorn stopped reading (the app is behind): not the client's delay
            self._body_started_at = self._body_read_at = now
            self._body_bytes = 0
        elif now - self._body_read_at >= limits.body_timeout:
            self._refuse(408)
            return
        elif self._body_bytes < limits.body_min_rate * (now - self._body_started_at):
            self._refuse(408, slow_body=True)
            return
        delay = self._body_read_at + limits.body_timeout - now
        self._read_timer = self.loop.call_later(delay, self._check_body)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    # --- refusing --------------------------------------------------------------------------------------------

    def _refuse(self, status: int, *, slow_body: bool = False) -> None:
        """Answer `status` (unless another response is on the wire, or this request has had its answer), tell
        the request's app task that the client is gone, and close: nothing more is read."""
        self._cancel_read_timer()
        if self.transport.is_closing():
            return
        log.debug("refusing a request with %d (client %s)", status, self.client)
        cycle = self.cycle
        if self._reading_body:  # this request's cycle has begun: answer unless it has started answering itself
            may_answer = not self.pipeline and not cycle.response_started
        else:  # the previous request's cycle must be done
            may_answer = cycle is None or cycle.response_complete
        if may_answer:
            self.transport.write(self._error_response(status, self._refusal_message(status, slow_body)))
        if cycle is not None and not cycle.response_complete:
            # The app stops waiting now, even while a client that reads nothing keeps the transport from closing.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _refusal_message(self, status: int, slow_body: bool) -> str:
        limits = self.limits
        if status == 414:
            return f"The request URL is longer than the limit of {limits.max_url_bytes} bytes."
        if status == 431:
            return f"The request headers are larger than the limit of {limits.max_header_bytes} bytes."
        if not self._reading_body:
            return f"The request headers were not complete within {limits.header_timeout:g} seconds."
        if slow_body:
            return f"The request body arrived slower than {limits.body_min_rate} bytes per second."
        return f"The request body stopped arriving for {limits.body_timeout:g} seconds."

    def _error_response(self, status: int, message: str, type: str = "invalid_request_error") -> bytes:
        body = envelope(message, type, None, _CODES[status])
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        parts.append(body)
        return b"".join(parts)


_CODES = {408: "request_timeout", 414: "url_too_long", 431: "headers_too_large", 503: "too_many_connections"}


def raise_open_files_limit(max_connections: int) -> None:
    """Raise this process's soft limit on open files to its hard limit, as nginx's worker_rlimit_nofile does
    (workers inherit it), and warn when server.max_connections cannot fit: every client connection may hold
    an upstream connection too, and past the limit every new connection fails with nothing in the log."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY: keep what there is
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = 2 * max_connections + _RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open files limit (%d) is below the %d that server.max_connections = %d may need (a client "
            "connection and its upstream connection each); raise LimitNOFILE / ulimit -n or lower max_connections",
            soft,
            needed,
            max_connections,
        )
