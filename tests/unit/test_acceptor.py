"""The acceptor: every connection waiting in the listen queue is accepted each time the loop wakes up for them,
not one per loop iteration as by uvloop's own server (acceptor.py says why), and a failing accept neither
crashes nor spins the loop. Real sockets on loopback, a real loop."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from capibara_facade.http.acceptor import AcceptingLoop, Acceptor

QUEUED = 64


class Recorder(asyncio.Protocol):
    """Keeps every transport it is connected to, and tells the harness."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.harness.connected.append(transport)
        self.harness.arrived.set()


class FailingListener(socket.socket):
    """A real listening socket whose first accept() calls fail with `errors`, one each."""

    def __init__(self, *errors: OSError) -> None:
        super().__init__()
        self.errors = list(errors)
        self.accepts = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().accept()


class Harness:
    """An `AcceptingLoop` (not running between calls), the servers it makes and the clients of the test."""

    def __init__(self) -> None:
        self.loop = AcceptingLoop()
        self.connected: list[asyncio.BaseTransport] = []
        self.arrived = asyncio.Event()
        self.clients: list[socket.socket] = []
        self.servers: list[asyncio.AbstractServer] = []

    def serve(self, listener: socket.socket) -> Acceptor:
        listener.bind(("127.0.0.1", 0))
        server = self.run(self.loop.create_server(lambda: Recorder(self), sock=listener, backlog=128))
        assert isinstance(server, Acceptor)
        self.servers.append(server)
        return server

    def connect(self, address: Any, count: int) -> list[socket.socket]:
        """`count` clients connected: the kernel has completed their handshakes, they wait in the listen queue."""
        clients = [socket.create_connection(address, timeout=5) for _ in range(count)]
        self.clients += clients
        return clients

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, 10))

    def until_connected(self, count: int) -> None:
        """Runs the loop until `count` connections have been made (10 s at most)."""

        async def arrivals() -> None:
            while len(self.connected) < count:
                await self.arrived.wait()
                self.arrived.clear()

        self.run(arrivals())

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for transport in self.connected:
            transport.close()
        for server in self.servers:
            server.close()
        self.run(asyncio.sleep(0.05))  # the transports' connection_lost callbacks
        self.loop.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def test_every_pending_connection_is_accepted_in_one_wakeup(harness: Harness) -> None:
    listener = socket.socket()
    acceptor = harness.serve(listener)
    clients = harness.connect(listener.getsockname(), QUEUED)

    acceptor.accept_pending()  # what the loop calls when the listening socket turns readable, once

    with pytest.raises(BlockingIOError):
        listener.accept()  # the listen queue is empty
    harness.until_connected(QUEUED)
    assert {t.get_extra_info("peername") for t in harness.connected} == {c.getsockname() for c in clients}


def test_every_accepted_connection_has_tcp_nodelay_so_small_sse_frames_are_not_held_back(harness: Harness) -> None:
    listener = socket.socket()
    harness.serve(listener)
    harness.connect(listener.getsockname(), 3)
    harness.until_connected(3)
    for transport in harness.connected:
        assert transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_client_that_gave_up_while_queued_is_skipped_and_those_behind_it_are_accepted(harness: Harness) -> None:
    listener = FailingListener(ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort"))
    acceptor = harness.serve(listener)
    harness.connect(listener.getsockname(), 3)

    acceptor.accept_pending()

    with pytest.raises(BlockingIOError):
        listener.accept()
    harness.until_connected(3)


def test_running_out_of_file_descriptors_stops_watching_the_listener_with_an_error_logged_then_resumes(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    listener = FailingListener(OSError(errno.EMFILE, "Too many open files"))
    acceptor = harness.serve(listener)
    harness.connect(listener.getsockname(), 1)

    acceptor.accept_pending()

    assert "cannot accept connections ([Errno 24] Too many open files)" in caplog.text
    # Still readable, the listener would wake the loop at once, for an accept failing again: it is not watched.
    assert not harness.loop.remove_reader(listener.fileno())
    assert acceptor.is_serving()
    harness.until_connected(1)  # accepting again a moment later
    assert listener.accepts == 3  # the failure, the connection, the empty queue


def test_once_closed_it_accepts_nothing_more_and_new_clients_are_refused(harness: Harness) -> None:
    listener = socket.socket()
    acceptor = harness.serve(listener)
    address = listener.getsockname()

    acceptor.close()
    harness.run(acceptor.wait_closed())

    assert not acceptor.is_serving() and acceptor.sockets == ()
    with pytest.raises(ConnectionRefusedError):
        harness.connect(address, 1)


def test_a_server_on_a_host_and_port_is_uvloops_own_and_serves(harness: Harness) -> None:
    server = harness.run(harness.loop.create_server(lambda: Recorder(harness), "127.0.0.1", 0))
    harness.servers.append(server)
    assert not isinstance(server, Acceptor)
    harness.connect(server.sockets[0].getsockname(), 1)
    harness.until_connected(1)
