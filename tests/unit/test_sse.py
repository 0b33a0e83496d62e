"""The SSE relay forwards complete events as they arrive and reports an upstream failure in-band."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from capibara_facade.observe.record import RequestRecord
from capibara_facade.upstream.sse import relay

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
        return [chunk async for chunk in relay(response, "default", RequestRecord("chat", "r"))]

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
        return b"".join(
            [chunk async for chunk in relay(response, "default", RequestRecord("chat", "r"), rename_to="capibara6")]
        )

    expected = b"".join(events).replace(b'"aya"', b'"capibara6"')
    assert asyncio.run(collect(events)) == expected  # one event per read
    assert asyncio.run(collect([b"".join(events)])) == expected  # both in one read


# Golden input in shapes msgspec would never write: spaces, escapes, `1.50`, keys out of order. A relay that
# re-serialised any event would change these bytes.
ROLE = b'data: {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "created": 1}\n\n'
TEXT = b'data: {"choices":[{"delta":{"content":"caf\\u00e9 \xc3\xa9"},"index":0,"logprobs":null}], "x": 1.50}\n\n'
WITH_USAGE = b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}\n\n'
USAGE_ONLY = b'data: {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\r\n\r\n'
DONE = b"data: [DONE]\n\n"
GOLDEN = [ROLE, b": ping\n\n", TEXT, WITH_USAGE, USAGE_ONLY, DONE]


def _relay(pieces: list[bytes], **options: object) -> bytes:
    async def collect() -> bytes:
        response = httpx.Response(200, stream=Pieces(pieces))
        return b"".join([chunk async for chunk in relay(response, "default", RequestRecord("chat", "r"), **options)])  # type: ignore[arg-type]

    return asyncio.run(collect())


@pytest.mark.parametrize("hide_usage_chunk", [False, True])
def test_events_are_relayed_byte_for_byte_whatever_their_json_formatting(hide_usage_chunk: bool) -> None:
    events = [ROLE, b": ping\n\n", TEXT, DONE]
    assert _relay(events, hide_usage_chunk=hide_usage_chunk) == b"".join(events)


def test_for_a_client_that_asked_for_usage_the_stream_is_the_upstreams_byte_for_byte() -> None:
    assert _relay(GOLDEN) == b"".join(GOLDEN)


@pytest.mark.parametrize("cut", [0, 7, 40, 150, 230, 300])
def test_for_a_client_that_did_not_ask_exactly_the_usage_only_chunk_is_dropped(cut: int) -> None:
    stream = b"".join(GOLDEN)
    pieces = [stream[:cut], stream[cut:]] if cut else GOLDEN
    assert _relay(pieces, hide_usage_chunk=True) == stream.replace(USAGE_ONLY, b"")


def test_an_upstream_error_event_is_replaced_by_the_facades_and_its_text_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leaky = b'data: {"error": {"message": "boom at /srv/secret/model.py", "type": "oom", "code": 500}}\n\n'
    out = _relay([ROLE, leaky, DONE])
    assert out.startswith(ROLE) and out.endswith(DONE)
    assert b"/srv/secret" not in out and b'"type":"upstream_error"' in out
    assert "/srv/secret" not in caplog.text and "type oom, code 500" in caplog.text


def test_an_event_that_never_ends_is_cut_at_the_size_limit_not_buffered() -> None:
    pieces = [ROLE, b'data: {"choices": "'] + [b"x" * 1024] * 64
    consumed: list[bytes] = []

    class Counting(Pieces):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for piece in self.pieces:
                consumed.append(piece)
                yield piece

    async def collect() -> list[bytes]:
        response = httpx.Response(200, stream=Counting(pieces))
        return [chunk async for chunk in relay(response, "default", RequestRecord("chat", "r"), max_event_bytes=8192)]

    out = asyncio.run(collect())
    assert out[0] == ROLE
    assert out[-1].startswith(b'data: {"error":') and b"larger than" in out[-1]
    assert len(consumed) < 16  # the relay stopped reading soon after the limit


def test_a_terminator_split_across_reads_still_ends_its_event() -> None:
    event = b'data: {"a": 1}\r\n\r\n'
    assert _relay([event[:-1], event[-1:], DONE]) == event + DONE
