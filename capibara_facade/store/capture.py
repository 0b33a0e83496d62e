"""What a stored chat completion is made of, caught on the request path and assembled off it.

The request path only keeps references: the client's body, and the answer's bytes as the client got them
(a whole answer, or a stream's events, appended as they are relayed). Everything else — decoding the
request's messages and metadata, assembling a stream's chunks into one completion — runs later, in the
recorder's task (`completed()`), never on the client's time.

A stream becomes the completion OpenAI would have stored: each choice's role, content (its deltas joined),
refusal, tool calls (their argument fragments joined), finish_reason; the stream's id, created, model and
system_fingerprint; and its usage (from the chunk, or as the upstream reported it to the facade when the
client did not ask for the usage chunk).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ..observe.usage import Usage
from . import StoredCompletion

__all__ = ["Capture", "NotStorable"]

_MAX_STREAM_BYTES = 16 * 1024 * 1024  # a longer stream is not stored (its memory stays bounded)
_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


class NotStorable(Exception):
    """The answer cannot be stored (not a completion, cut short, too large)."""


class _Request(msgspec.Struct):
    messages: list[msgspec.Raw]
    metadata: dict[str, str] | None = None


class Capture:
    """One chat completion to be stored: what the request path hands the recorder."""

    __slots__ = ("answer", "body", "caller", "events", "events_size", "expires_at", "model", "usage")

    def __init__(self, caller: str, model: str, body: bytes, retention_days: int | None) -> None:
        self.caller, self.model, self.body = caller, model, body
        self.expires_at = int(time.time()) + retention_days * 86400 if retention_days is not None else None
        self.answer: bytes | None = None  # a whole answer
        self.events: list[bytes] | None = None  # a stream's events, as relayed
        self.events_size = 0
        self.usage: Usage | None = None

    def answered(self, content: bytes) -> None:
        self.answer = content

    def relayed(self, events: bytes) -> None:
        """Fed by the SSE relay with each piece it sends the client."""
        if self.events is None:
            self.events = []
        self.events_size += len(events)
        if self.events_size <= _MAX_STREAM_BYTES:
            self.events.append(events)

    def completed(self) -> StoredCompletion:
        """The stored completion (in the recorder's task); NotStorable when there is none to store."""
        request = msgspec.json.decode(self.body, type=_Request)
        if self.answer is not None:
            completion = _decode(self.answer)
        elif self.events is not None and self.events_size <= _MAX_STREAM_BYTES:
            completion = _assembled(b"".join(self.events), self.usage)
        else:
            raise NotStorable("no complete answer")
        if not isinstance(completion, dict) or not isinstance(completion.get("id"), str):
            raise NotStorable("the answer is not a chat completion")
        completion.pop("metadata", None)
        completion_id = completion["id"]
        created = completion.get("created")
        return StoredCompletion(
            self.caller,
            completion_id,
            self.model,
            created if isinstance(created, int) else int(time.time()),
            time.time_ns() // 1000,
            self.expires_at,
            _encode(completion),
            _messages(completion_id, request.messages),
            request.metadata or {},
        )


def _assembled(stream: bytes, usage: Usage | None) -> dict[str, Any]:
    completion: dict[str, Any] = {"object": "chat.completion"}
    choices: dict[int, dict[str, Any]] = {}
    done = False
    for line in stream.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        chunk = _decode(data)
        if not isinstance(chunk, dict) or "error" in chunk:
            raise NotStorable("the stream ended in an error")
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and key not in completion:
                completion[key] = chunk[key]
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for delta_choice in chunk.get("choices") or ():
            choice = choices.setdefault(
                delta_choice.get("index", 0),
                {"index": delta_choice.get("index", 0), "message": {"role": "assistant", "content": None}},
            )
            _add_delta(choice["message"], delta_choice.get("delta") or {})
            if delta_choice.get("finish_reason") is not None:
                choice["finish_reason"] = delta_choice["finish_reason"]
            choice.setdefault("logprobs", None)
    if not done or "id" not in completion:
        raise NotStorable("the stream did not complete")
    completion["choices"] = [_finished(choices[index]) for index in sorted(choices)]
    if "usage" not in completion and usage is not None:
        completion["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
    return completion


def _add_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    if delta.get("role"):
        message["role"] = delta["role"]
    for key in ("content", "refusal"):
        if isinstance(delta.get(key), str):
            message[key] = (message.get(key) or "") + delta[key]
    for call in delta.get("tool_calls") or ():
        calls: list[dict[str, Any]] = message.setdefault("tool_calls", [])
        index = call.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        known = calls[index]
        if call.get("id"):
            known["id"] = call["id"]
        function = call.get("function") or {}
        known["function"]["name"] += function.get("name") or ""
        known["function"]["arguments"] += function.get("arguments") or ""


def _finished(choice: dict[str, Any]) -> dict[str, Any]:
    choice.setdefault("finish_reason", None)
    return choice


def _messages(completion_id: str, messages: list[msgspec.Raw]) -> bytes:
    """The request's messages as `messages.list` serves them: each with an id, its text `content`, and its
    content parts (when it had them) in `content_parts`."""
    served = []
    for position, raw in enumerate(messages):
        message = _decode(raw)
        content = message.get("content")
        parts = None
        if isinstance(content, list):
            parts = content
            texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            message["content"] = "".join(texts) or None
        served.append({"id": f"{completion_id}-{position}", **message, "content_parts": parts})
    return _encode(served)
