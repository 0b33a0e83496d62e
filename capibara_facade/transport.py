"""An httpx transport on aiohttp's connection pool.

Why not httpx's default transport: its pool (httpcore) walks every pooled connection on every request.
Measured on this project's target machine, one uvicorn worker on one core in front of a fast upstream:
2.2 ms of CPU per request and 461 req/s at 32 concurrent requests, p99 of 5 s at 128; the same proxy on
aiohttp's pool did 4x the throughput. So the facade keeps httpx's API (`httpx.AsyncClient`, `Request`,
`Response`, `Timeout`, its exception classes) and puts aiohttp's pool under it, in this one module.

Compared with the `httpx-aiohttp` package this transport (a) maps aiohttp's exceptions onto httpx's
precisely (that package reports a refused connection as `ConnectTimeout`), (b) never asks aiohttp to
decompress, so bytes pass through as the upstream sent them, and (c) yields streamed bytes as soon as
they arrive (`iter_any`) rather than in fixed-size chunks. aiohttp sets TCP_NODELAY on every connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
import yarl

__all__ = ["AiohttpTransport"]


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[httpx.URL, yarl.URL] = {}  # parsed once: an upstream has a handful of endpoints

    def _open_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop that will own its connections.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
            enable_cleanup_closed=False,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        if session is None:
            session = self._session = self._open_session()
        timeout = request.extensions.get("timeout", {})
        url = self._urls.get(request.url)
        if url is None:
            url = self._urls[request.url] = yarl.URL(str(request.url))
        with _mapped_exceptions(connecting=True):
            response = await session.request(
                request.method,
                url,
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped_exceptions(connecting=False):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # A body read to the end returns its connection to the pool; one abandoned half-way (client gone,
        # error) closes it, so the upstream sees the disconnect and stops generating.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


@contextmanager
def _mapped_exceptions(*, connecting: bool) -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        if connecting and isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
        raise httpx.ReadTimeout(str(exc) or "timed out waiting for the upstream") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise httpx.RemoteProtocolError(str(exc) or "upstream closed the connection") from exc
    except aiohttp.ClientResponseError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.NetworkError(str(exc)) from exc
