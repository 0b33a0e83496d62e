"""Token usage as the upstream reports it: the `usage` of a whole answer, or of a stream's usage chunk.

Only that one field is decoded (msgspec skips the rest of the document without building it). The facade
never estimates tokens from text: a server that reports no usage is counted as such, not guessed at.
"""

from __future__ import annotations

import msgspec

__all__ = ["ResponseUsage", "Usage", "read_response_usage", "read_usage"]


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None


class ResponseUsage(msgspec.Struct):
    """The Responses API's names for the same counts."""

    input_tokens: int = 0
    output_tokens: int = 0

    def as_usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens)


class _WithResponseUsage(msgspec.Struct):
    usage: ResponseUsage | None = None


_decoder = msgspec.json.Decoder(_WithUsage)
_response_decoder = msgspec.json.Decoder(_WithResponseUsage)


def read_usage(document: bytes | bytearray) -> Usage | None:
    """The `usage` of a chat completion or chunk; None when there is none (or it is not in OpenAI's shape)."""
    try:
        return _decoder.decode(document).usage
    except (msgspec.DecodeError, RecursionError):
        return None


def read_response_usage(document: bytes | bytearray) -> Usage | None:
    """The `usage` of a Responses API response (`input_tokens`, `output_tokens`); None when there is none."""
    try:
        usage = _response_decoder.decode(document).usage
    except (msgspec.DecodeError, RecursionError):
        return None
    return usage.as_usage() if usage is not None else None
