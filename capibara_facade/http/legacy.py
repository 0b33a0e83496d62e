"""POST /api/chat: the capibara6 frontend's original contract, turned into an OpenAI chat completion.

    {"message": "Hola", "model"?: str, "temperature"?: float, "max_tokens"?: int, "stream"?: bool,
     "messages"?: [...earlier turns...], "system"?: str}

Missing fields take the configured defaults (`aya_expanse_multilingual`, 0.7, 200). `messages` carries
earlier turns; `message`, when given too, is appended as the newest user turn. The answer is the
upstream's chat completion JSON, or its SSE stream when `stream` is true.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..config import LegacyChatConfig
from ..errors import InvalidRequest
from ..wire import Message, decoding, invalid, require_content

__all__ = ["LegacyChatRequest", "to_chat_completion"]


class LegacyChatRequest(msgspec.Struct, kw_only=True):
    message: str | None = None
    messages: list[msgspec.Raw] | None = None
    system: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False


_decoder = msgspec.json.Decoder(LegacyChatRequest)
_message_decoder = msgspec.json.Decoder(Message)
_encode = msgspec.json.Encoder().encode


def to_chat_completion(body: bytes, defaults: LegacyChatConfig, max_depth: int) -> bytes:
    """The OpenAI chat-completion request body for a legacy /api/chat body (validated downstream); a body
    nested deeper than `max_depth` (the server's `max_json_depth`) is refused before it is decoded."""
    with decoding(body, max_depth):
        legacy = _decoder.decode(body)
        for index, turn in enumerate(legacy.messages or ()):
            try:  # here, where the index is still the client's (a system message is put in front below)
                require_content(_message_decoder.decode(turn), index)
            except msgspec.ValidationError as exc:
                raise invalid(exc, prefix=f".messages[{index}]") from None
    if not legacy.message and not legacy.messages:
        raise InvalidRequest("Missing required parameter: 'message'.", param="message")
    messages: list[Any] = []
    system = legacy.system if legacy.system is not None else defaults.system
    if system:
        messages.append({"role": "system", "content": system})
    messages.extend(legacy.messages or ())
    if legacy.message:
        messages.append({"role": "user", "content": legacy.message})
    request: dict[str, Any] = {
        "model": legacy.model or defaults.model,
        "messages": messages,
        "temperature": defaults.temperature if legacy.temperature is None else legacy.temperature,
        "max_tokens": defaults.max_tokens if legacy.max_tokens is None else legacy.max_tokens,
    }
    if legacy.stream:
        request["stream"] = True
    return _encode(request)
