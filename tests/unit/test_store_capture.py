"""A stored completion is assembled off the request path from what the client got: the whole answer, or a
stream's events (content, role, tool calls, finish_reason, usage) — and never from an unfinished stream."""

from __future__ import annotations

import asyncio
import json

import pytest

from capibara_facade.observe.record import RequestRecord
from capibara_facade.observe.usage import Usage
from capibara_facade.store import StoredCompletion
from capibara_facade.store.capture import Capture, NotStorable
from capibara_facade.store.recorder import Recorder

BODY = json.dumps(
    {
        "model": "capibara6",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hola"}, {"type": "text", "text": " capibara"}]},
        ],
        "store": True,
        "metadata": {"topic": "greeting"},
    }
).encode()


def event(chunk: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return event(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 7,
            "model": "m",
            "choices": [choice],
            **extra,
        }
    )


def test_a_whole_answer_is_stored_as_answered_with_the_requests_metadata_and_messages() -> None:
    capture = Capture("team", "capibara6", BODY, None)
    capture.answered(b'{"id":"chatcmpl-9","object":"chat.completion","created":5,"model":"m","choices":[]}')
    stored = capture.completed()
    assert (stored.id, stored.caller, stored.model, stored.created, stored.metadata) == (
        "chatcmpl-9",
        "team",
        "capibara6",
        5,
        {"topic": "greeting"},
    )
    messages = json.loads(stored.messages)
    assert [message["id"] for message in messages] == ["chatcmpl-9-0", "chatcmpl-9-1"]
    assert messages[0]["content"] == "Be brief." and messages[0]["content_parts"] is None
    assert messages[1]["content"] == "Hola capibara" and len(messages[1]["content_parts"]) == 2


def test_a_stream_is_assembled_into_one_completion_with_its_usage() -> None:
    capture = Capture("team", "capibara6", BODY, None)
    capture.relayed(chunk({"role": "assistant", "content": ""}) + chunk({"content": "Ho"}))
    capture.relayed(chunk({"content": "la"}, "stop") + b"data: [DONE]\n\n")
    capture.usage = Usage(3, 2)  # the usage chunk went to the facade only
    completion = json.loads(capture.completed().completion)
    assert completion["id"] == "chatcmpl-1" and completion["object"] == "chat.completion"
    assert completion["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hola"}, "finish_reason": "stop", "logprobs": None}
    ]
    assert completion["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_a_streamed_tool_call_is_stored_with_its_arguments_joined() -> None:
    capture = Capture("team", "capibara6", BODY, None)
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"ci'}}
    capture.relayed(chunk({"role": "assistant", "tool_calls": [first]}))
    capture.relayed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Lima"}'}}]}, "tool_calls"))
    capture.relayed(b"data: [DONE]\n\n")
    message = json.loads(capture.completed().completion)["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Lima"}'}}
    ]


@pytest.mark.parametrize(
    "events",
    [
        chunk({"content": "Ho"}),  # cut before [DONE]
        chunk({"content": "Ho"}) + b'data: {"error": {"message": "boom"}}\n\n' + b"data: [DONE]\n\n",
    ],
)
def test_a_stream_that_did_not_complete_is_not_stored(events: bytes) -> None:
    capture = Capture("team", "capibara6", BODY, None)
    capture.relayed(events)
    with pytest.raises(NotStorable):
        capture.completed()


def test_retention_days_set_when_the_completion_expires() -> None:
    capture = Capture("team", "capibara6", BODY, 2)
    capture.answered(b'{"id":"chatcmpl-9","created":5,"choices":[]}')
    stored = capture.completed()
    assert stored.expires_at is not None and stored.expires_at - stored.stored_at // 1_000_000 in (172800, 172799)


def test_a_writer_survives_an_answer_of_any_shape_and_counts_it() -> None:
    class Kept:
        def __init__(self) -> None:
            self.saved: list[str] = []

        async def save(self, completion: StoredCompletion) -> None:
            self.saved.append(completion.id)

        async def purge_expired(self) -> int:
            return 0

        async def aclose(self) -> None:
            pass

    async def run() -> tuple[list[str], list[str]]:
        store, failures = Kept(), list[str]()
        recorder = Recorder(store, 10, failures.append)  # type: ignore[arg-type]
        recorder.start()
        for stream in (b'data: {"choices": [7]}\n\ndata: [DONE]\n\n', chunk({"content": "ok"}) + b"data: [DONE]\n\n"):
            capture = Capture("team", "capibara6", BODY, None)
            capture.relayed(stream)
            record = RequestRecord("chat", "r")
            record.status = 200
            recorder.submit(capture, record)
        await recorder.aclose()
        return store.saved, failures

    assert asyncio.run(run()) == (["chatcmpl-1"], ["unstorable"])
