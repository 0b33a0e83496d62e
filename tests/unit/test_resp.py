"""The limiter's Redis protocol: replies parsed whole or not at all, in order, errors as errors."""

from __future__ import annotations

import pytest

from capibara_facade.callers.resp import RedisReplyError, _command, _parse


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert _command((b"EVALSHA", "ab", 2, "k")) == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$1\r\nk\r\n"


def test_the_admit_scripts_reply_is_parsed_into_its_seven_values() -> None:
    reply = b"*7\r\n:1\r\n$0\r\n\r\n:0\r\n:29\r\n:2000\r\n:0\r\n:0\r\n"
    assert _parse(bytearray(reply), 0) == ([1, b"", 0, 29, 2000, 0, 0], len(reply))


@pytest.mark.parametrize("cut", range(1, 24))
def test_a_reply_cut_anywhere_is_not_parsed_until_the_rest_arrives(cut: int) -> None:
    reply = b"*3\r\n:1\r\n$8\r\nrequests\r\n:-5\r\n"
    assert _parse(bytearray(reply[:cut]), 0) is None
    assert _parse(bytearray(reply), 0) == ([1, b"requests", -5], len(reply))


def test_replies_are_read_one_after_another_from_one_buffer() -> None:
    buffer = bytearray(b"+OK\r\n:7\r\n$-1\r\n")
    first = _parse(buffer, 0)
    assert first == ("OK", 5)
    second = _parse(buffer, 5)
    assert second == (7, 9)
    assert _parse(buffer, 9) == (None, len(buffer))


def test_an_error_reply_becomes_an_error_value_not_an_exception_in_the_reader() -> None:
    parsed = _parse(bytearray(b"-NOSCRIPT No matching script.\r\n"), 0)
    assert parsed is not None
    error, _ = parsed
    assert isinstance(error, RedisReplyError)
    assert str(error).startswith("NOSCRIPT")


def test_bytes_that_are_not_resp_are_refused() -> None:
    with pytest.raises(ValueError, match="unexpected reply"):
        _parse(bytearray(b"HTTP/1.1 400 Bad Request\r\n"), 0)
