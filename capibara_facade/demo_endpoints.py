"""The demo upstream's answers beyond chat: `/v1/completions`, `/v1/embeddings` and `/v1/responses`.

Deterministic like its chat answers (the same request gives the same text, vectors and usage), except the
Responses API's ids: each demo process names its responses with a prefix of its own and keeps the last few
hundred in memory, as vLLM does per replica, so a `previous_response_id` it did not create is a 404 — which
is how the tests prove the facade sends a continuation back to the upstream that created its response.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import struct
from typing import Any

import msgspec

__all__ = ["CompletionAnswer", "EmbeddingAnswer", "Refused", "Responses"]

CREATED = 1764115200
_encode = msgspec.json.Encoder().encode
_DIMENSIONS = 8


class Refused(Exception):
    """The request names something this server does not have: answered with `status` and `document`."""

    def __init__(self, status: int, document: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.document = status, document


class _Request(msgspec.Struct, kw_only=True):
    model: str
    stream: bool = False
    demo: dict[str, Any] | None = None


class CompletionRequest(_Request):
    prompt: str | list[Any] | None = None
    max_tokens: int | None = None
    stream_options: dict[str, Any] | None = None


class EmbeddingRequest(_Request):
    input: str | list[Any]
    encoding_format: str = "float"


class ResponseRequest(_Request):
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None


def _words(prompt: str, limit: int | None) -> tuple[list[str], bool]:
    words = f"Hola! You said: {prompt}".split()
    kept = words[:limit] if limit else words
    return kept, len(kept) < len(words)


def _texts(value: str | list[Any] | None) -> list[str]:
    if value is None:
        return [""]
    if isinstance(value, str):
        return [value]
    return [item if isinstance(item, str) else " ".join(map(str, item)) if isinstance(item, list) else str(item)
            for item in value]  # fmt: skip


class CompletionAnswer:
    """`POST /v1/completions`: "Hola! You said: <prompt>", word by word when streamed."""

    def __init__(self, request: CompletionRequest) -> None:
        self.request = request
        prompt = " ".join(_texts(request.prompt))
        self.id = "cmpl-demo-" + hashlib.sha256(_encode([request.model, prompt])).hexdigest()[:16]
        self.words, truncated = _words(prompt, request.max_tokens)
        self.finish_reason = "length" if truncated else "stop"
        self.prompt_tokens = len(prompt.split())

    def usage(self) -> dict[str, int]:
        completion = len(self.words)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}  # fmt: skip

    def _object(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": CREATED, "model": self.request.model,
                "choices": choices, **extra}  # fmt: skip

    def completion(self) -> dict[str, Any]:
        choice = {"text": " ".join(self.words), "index": 0, "logprobs": None, "finish_reason": self.finish_reason}
        return self._object([choice], usage=self.usage())

    def frames(self) -> list[bytes]:
        pieces = [word if position == 0 else " " + word for position, word in enumerate(self.words)]
        choices = [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None} for piece in pieces]
        choices.append({"text": "", "index": 0, "logprobs": None, "finish_reason": self.finish_reason})
        frames = [_data(self._object([choice])) for choice in choices]
        if (self.request.stream_options or {}).get("include_usage"):
            frames.append(_data(self._object([], usage=self.usage())))
        frames.append(b"data: [DONE]\n\n")
        return frames


class EmbeddingAnswer:
    """`POST /v1/embeddings`: a vector of eight numbers per input, drawn from its SHA-256."""

    def __init__(self, request: EmbeddingRequest) -> None:
        self.request = request

    def completion(self) -> dict[str, Any]:
        texts = _texts(self.request.input)
        data = []
        for index, text in enumerate(texts):
            digest = hashlib.sha256(text.encode()).digest()
            vector = [round(byte / 255 - 0.5, 6) for byte in digest[:_DIMENSIONS]]
            encoded: list[float] | str = vector
            if self.request.encoding_format == "base64":
                encoded = base64.b64encode(struct.pack(f"<{_DIMENSIONS}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(text.split()) for text in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": self.request.model, "usage": usage}

    def frames(self) -> list[bytes]:
        raise Refused(400, _error("Embeddings cannot be streamed.", "stream"))


class Responses:
    """The Responses API of one demo process, with the responses it created (the newest 500)."""

    def __init__(self) -> None:
        self.prefix = os.urandom(4).hex()  # this process's: another demo upstream knows none of its ids
        self.created = 0
        self.known: collections.OrderedDict[str, str] = collections.OrderedDict()  # id → its text

    def answer(self, request: ResponseRequest) -> ResponseAnswer:
        previous = request.previous_response_id
        if previous is not None and previous not in self.known:
            raise Refused(404, _error(f"Response with id '{previous}' not found.", "previous_response_id"))
        self.created += 1
        response_id = f"resp_{self.prefix}{self.created:08d}"
        answer = ResponseAnswer(request, response_id)
        self.known[response_id] = answer.text
        while len(self.known) > 500:
            self.known.popitem(last=False)
        return answer


class ResponseAnswer:
    """`POST /v1/responses`: one output message, "Hola! You said: <the last user input>"."""

    def __init__(self, request: ResponseRequest, response_id: str) -> None:
        self.request = request
        self.id = response_id
        prompt = _last_input_text(request.input)
        self.words, truncated = _words(prompt, request.max_output_tokens)
        self.text = " ".join(self.words)
        self.status = "incomplete" if truncated else "completed"
        self.input_tokens = len(prompt.split()) + len((request.instructions or "").split())

    def _response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self.id, "object": "response", "created_at": CREATED, "status": status, "model": self.request.model,
            "output": output, "usage": usage, "previous_response_id": self.request.previous_response_id,
            "instructions": self.request.instructions, "error": None, "incomplete_details": None,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "metadata": {},
        }  # fmt: skip

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
        return {"type": "message", "id": "msg_" + self.id[5:], "status": status, "role": "assistant",
                "content": content}  # fmt: skip

    def usage(self) -> dict[str, Any]:
        output = len(self.words)
        return {"input_tokens": self.input_tokens, "output_tokens": output,
                "total_tokens": self.input_tokens + output, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip

    def completion(self) -> dict[str, Any]:
        return self._response(self.status, [self._message("completed", self.text)], self.usage())

    def frames(self) -> list[bytes]:
        item_id = "msg_" + self.id[5:]
        part = {"type": "output_text", "text": "", "annotations": []}
        place = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self._response("in_progress", [], None)},
            {"type": "response.in_progress", "response": self._response("in_progress", [], None)},
            {"type": "response.output_item.added", "output_index": 0, "item": self._message("in_progress", None)},
            {"type": "response.content_part.added", **place, "part": part},
        ]
        for position, word in enumerate(self.words):
            delta = word if position == 0 else " " + word
            events.append({"type": "response.output_text.delta", **place, "delta": delta, "logprobs": []})
        events += [
            {"type": "response.output_text.done", **place, "text": self.text, "logprobs": []},
            {"type": "response.content_part.done", **place, "part": {**part, "text": self.text}},
            {"type": "response.output_item.done", "output_index": 0, "item": self._message("completed", self.text)},
            {"type": f"response.{self.status}", "response": self.completion()},
        ]
        return [
            b"event: " + event["type"].encode() + b"\n" + _data({**event, "sequence_number": number})
            for number, event in enumerate(events)
        ]


def _last_input_text(items: str | list[dict[str, Any]]) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if item.get("role", "user") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _data(document: dict[str, Any]) -> bytes:
    return b"data: " + _encode(document) + b"\n\n"


def _error(message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
