"""Token usage as the upstream reports it: the `usage` of a whole answer, or of a stream's usage chunk.

Only that one field is decoded (msgspec skips the rest of the document without building it). The facade
never estimates tokens from text: a server that reports no usage is counted as such, not guessed at.
"""

from __future__ import annotations

import msgspec

__all__ = ["Usage", "read_usage"]


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None


_decoder = msgspec.json.Decoder(_WithUsage)


def read_usage(document: bytes | bytearray) -> Usage | None:
    """The `usage` of a chat completion or chunk; None when there is none (or it is not in OpenAI's shape)."""
    try:
        return _decoder.decode(document).usage
    except (msgspec.DecodeError, RecursionError):
        return None
