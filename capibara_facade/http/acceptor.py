"""uvloop's event loop, but accepting every connection waiting in the listen queue each time it wakes up for them.

uvloop 0.23's libuv accepts one connection per readiness callback of a listening socket (`uv__server_io` no
longer loops until EAGAIN), and under load one loop iteration takes up to ~100 ms. 128 clients connecting at
once to a facade whose upstream connections had expired were accepted one per iteration, over 1.5 s (strace):
their first requests took 1.2-1.9 s at p99 while every later one took ~150 ms. asyncio's own loop accepts up to
`backlog` connections per wake-up and shows no such tail (first requests at most ~175 ms).

`AcceptingLoop.create_server(sock=...)`, which is how uvicorn serves the sockets `capibara-facade serve` binds,
returns an `Acceptor`: it accepts until the queue is empty and hands each connection to uvloop
(`connect_accepted_socket`: the transport uvloop's own server makes, TCP_NODELAY included). Everything else,
the request path included, is uvloop's. uvicorn takes the loop as `loop="capibara_facade.http.acceptor:AcceptingLoop"`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from ssl import SSLContext
from typing import Any

import uvloop

__all__ = ["AcceptingLoop", "Acceptor"]

log = logging.getLogger(__name__)

# Out of file descriptors (EMFILE, ENFILE) or kernel memory, accepting again at once fails again, in a busy
# loop; the clients wait in the listen queue meanwhile. asyncio pauses as long.
_RETRY_AFTER_SECONDS = 1.0
_Factory = Callable[[], asyncio.BaseProtocol]
# Enough for any burst to be taken in one or two turns, few enough that with several workers woken for the same
# queue one of them cannot take it all while the others idle (the kernel wakes every worker; the first takes).
_PER_WAKEUP = 256


class AcceptingLoop(uvloop.Loop):
    """uvloop's loop, serving a given listening socket with an `Acceptor`; TLS and host/port stay uvloop's."""

    async def create_server(  # type: ignore[override]  # one signature for uvloop's two overloads
        self,
        protocol_factory: _Factory,
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: SSLContext | None = None,
        **options: Any,
    ) -> asyncio.AbstractServer:
        if sock is None or ssl is not None or options:
            arguments = {"host": host, "port": port, "sock": sock, "backlog": backlog, "ssl": ssl, **options}
            return await super().create_server(protocol_factory, **arguments)
        return Acceptor(self, sock, protocol_factory, backlog)


class Acceptor(asyncio.AbstractServer):
    """A listening socket whose every pending connection is accepted per wake-up (at most `backlog`, as asyncio)."""

    def __init__(self, loop: uvloop.Loop, sock: socket.socket, protocol_factory: _Factory, backlog: int) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] = loop.create_future()
        self._connecting: set[asyncio.Task[None]] = set()  # accepted, their transport not made yet
        sock.setblocking(False)
        sock.listen(backlog)
        self._read()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed.done() else (self._sock,)

    def accept_pending(self) -> None:
        """The listening socket is readable: accept until the listen queue is empty."""
        for _ in range(min(self._backlog, _PER_WAKEUP)):
            try:
                connection, _ = self._sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as error:
                log.error("cannot accept connections (%s); trying again in %g s", error, _RETRY_AFTER_SECONDS)
                self._stop_reading()
                self._retry = self._loop.call_later(_RETRY_AFTER_SECONDS, self._read)
                return
            task = self._loop.create_task(self._connect(connection))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, connection: socket.socket) -> None:
        try:  # uv_tcp_open makes the socket non-blocking; the transport sets TCP_NODELAY and owns the socket
            await self._loop.connect_accepted_socket(self._protocol_factory, connection)
        except OSError as error:
            log.debug("a connection was lost before it was set up: %s", error)
            connection.close()

    def _read(self) -> None:
        self._retry = None
        if not self._reading and not self._closed.done():
            self._loop.add_reader(self._sock.fileno(), self.accept_pending)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def close(self) -> None:  # uvicorn's shutdown (SIGTERM) calls close, then wait_closed
        """Stop accepting: the listening socket is closed, so new clients are refused (and queued ones reset)."""
        if self._closed.done():
            return
        self._stop_reading()
        if self._retry is not None:
            self._retry.cancel()
        self._sock.close()
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Until `close()`; the connections are uvicorn's, which waits for them itself."""
        await asyncio.shield(self._closed)

    def is_serving(self) -> bool:
        return not self._closed.done()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        self._read()

    async def serve_forever(self) -> None:
        await self.wait_closed()
