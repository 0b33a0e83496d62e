"""The SSE relay forwards complete events as they arrive and reports an upstream failure in-band."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from capibara_facade.sse import relay

FRAMES = [b'data: {"a":1}\n\n', b": ping\n\n", b'data: {"b":2}\r\n\r\n', b"data: [DONE]\n\n"]


class Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes], fail: bool = False) -> None:
        self.pieces, self.fail = pieces, fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.fail:
            raise httpx.RemoteProtocolError("peer closed connection")


def _relayed(pieces: list[bytes], fail: bool = False) -> list[bytes]:
    async def collect() -> list[bytes]:
        response = httpx.Response(200, stream=Pieces(pieces, fail))
        return [chunk async for chunk in relay(response, "default")]

    return asyncio.run(collect())


def test_reads_that_end_on_event_boundaries_are_forwarded_as_they_are() -> None:
    assert _relayed(FRAMES) == FRAMES


@pytest.mark.parametrize("cut", [3, 10, 17, 25, 40])
def test_an_event_split_across_reads_is_forwarded_whole_and_nothing_is_lost(cut: int) -> None:
    stream = b"".join(FRAMES)
    out = _relayed([stream[:cut], stream[cut:]])
    assert b"".join(out) == stream
    assert all(chunk.endswith((b"\n\n", b"\r\n\r\n")) for chunk in out)


def test_an_upstream_failure_mid_event_drops_the_half_event_and_ends_with_an_error_event() -> None:
    out = _relayed([FRAMES[0], b'data: {"half'], fail=True)
    assert out[0] == FRAMES[0]
    assert out[1].startswith(b'data: {"error":') and out[1].endswith(b"\n\n")
    assert b"half" not in b"".join(out)


def test_a_last_event_without_terminator_is_still_delivered() -> None:
    assert b"".join(_relayed([b"data: [DONE]"])) == b"data: [DONE]"


@pytest.mark.parametrize("terminator", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_renaming_keeps_every_framing_byte(terminator: bytes) -> None:
    events = [b'data: {"model":"aya","x":1}' + terminator, b"data: [DONE]" + terminator]

    async def collect(pieces: list[bytes]) -> bytes:
        response = httpx.Response(200, stream=Pieces(pieces))
        return b"".join([chunk async for chunk in relay(response, "default", rename_to="capibara6")])

    expected = b"".join(events).replace(b'"aya"', b'"capibara6"')
    assert asyncio.run(collect(events)) == expected  # one event per read
    assert asyncio.run(collect([b"".join(events)])) == expected  # both in one read
