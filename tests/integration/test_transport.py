"""The upstream transport over real sockets: a pooled connection the upstream drops is not a 502."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from capibara_facade.upstream.transport import AiohttpTransport

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


async def _read_request(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> bytes:
    request = b""
    while not request.endswith(b"}"):
        chunk = await loop.sock_recv(connection, 65536)
        if not chunk:
            return b""
        request += chunk
    return request


async def _answer_once_per_connection(server: socket.socket, answered: list[int]) -> None:
    """Answers a connection's first request with keep-alive, then drops the connection on the next one: what a
    client sees when an upstream's idle timeout closes a pooled connection just as a request is written."""
    loop = asyncio.get_running_loop()
    while True:
        connection, _ = await loop.sock_accept(server)
        with connection:
            if await _read_request(loop, connection):
                await loop.sock_sendall(connection, ANSWER)
                answered.append(1)
            await _read_request(loop, connection)


async def _three_requests(transport: AiohttpTransport, url: str) -> list[int]:
    statuses = []
    for _ in range(3):
        response = await transport.handle_async_request(httpx.Request("POST", url, content=b'{"model":"m"}'))
        statuses.append(response.status_code)
        await response.aclose()
    return statuses


def test_a_pooled_connection_the_upstream_drops_is_retried_once_on_a_fresh_one() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        server = socket.create_server(("127.0.0.1", 0))
        server.setblocking(False)
        answered: list[int] = []
        serving = asyncio.create_task(_answer_once_per_connection(server, answered))
        transport = AiohttpTransport(max_connections=4, keepalive_expiry=60)
        try:
            statuses = await _three_requests(transport, f"http://127.0.0.1:{server.getsockname()[1]}/v1/x")
        finally:
            await transport.aclose()
            serving.cancel()
            server.close()
        return statuses, answered

    statuses, answered = asyncio.run(scenario())
    assert statuses == [200, 200, 200]
    assert len(answered) == 3


def test_a_refused_connection_is_a_connect_error_without_retrying() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]  # closed again below: nothing listens there

    async def scenario() -> None:
        transport = AiohttpTransport(max_connections=4, keepalive_expiry=60)
        try:
            await _three_requests(transport, f"http://127.0.0.1:{port}/v1/x")
        finally:
            await transport.aclose()

    with pytest.raises(httpx.ConnectError):
        asyncio.run(scenario())
