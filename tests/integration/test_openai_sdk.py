"""The official `openai` SDK, pointed at the facade with `base_url`, works unchanged."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.conftest import MODELS_EUROPE, Upstream

HELLO = [{"role": "user", "content": "hola capibara"}]


def test_models_list_shows_every_public_name(client: openai.OpenAI) -> None:
    models = client.models.list()
    names = [model.id for model in models.data]
    assert set(MODELS_EUROPE) <= set(names)
    assert {"capibara6", "capibara6-renamed", "capibara6-brief", "offline"} <= set(names)
    assert all(model.object == "model" and model.created > 0 and model.owned_by for model in models.data)


def test_models_retrieve_returns_one_model(client: openai.OpenAI) -> None:
    model = client.models.retrieve("capibara6")
    assert (model.id, model.object) == ("capibara6", "model")


def test_retrieving_an_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-17")
    assert caught.value.code == "model_not_found"


def test_completion_through_an_alias_reaches_the_upstream_model(client: openai.OpenAI, upstream: Upstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="capibara6", messages=HELLO)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hola! You said: hola capibara"
    # Default response_model = "upstream": the upstream's bytes are untouched, so the real model id shows.
    assert completion.model == "aya_expanse_multilingual"
    sent = json.loads(upstream.request(raw.headers["x-request-id"])["body"])
    assert sent["model"] == "aya_expanse_multilingual"


def test_an_alias_in_alias_mode_answers_with_the_name_the_client_asked_for(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="capibara6-renamed", messages=HELLO)
    assert completion.model == "capibara6-renamed"
    chunks = list(client.chat.completions.create(model="capibara6-renamed", messages=HELLO, stream=True))
    assert chunks and {chunk.model for chunk in chunks} == {"capibara6-renamed"}


def test_an_alias_applies_its_defaults_and_caps_max_tokens(client: openai.OpenAI, upstream: Upstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="capibara6-brief", messages=HELLO, max_tokens=500)
    sent = json.loads(upstream.request(raw.headers["x-request-id"])["body"])
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("phi4_fast", 3, 0.2)
    assert raw.parse().choices[0].finish_reason == "length"


def test_an_alias_default_never_overrides_what_the_client_sent(client: openai.OpenAI, upstream: Upstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="capibara6-brief", messages=HELLO, temperature=1.1)
    sent = json.loads(upstream.request(raw.headers["x-request-id"])["body"])
    assert sent["temperature"] == 1.1


def test_streaming_yields_chunks_whose_text_equals_the_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="phi4_fast", messages=HELLO).choices[0].message.content
    chunks = list(client.chat.completions.create(model="phi4_fast", messages=HELLO, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 3
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_usage_arrives_in_a_final_chunk_without_choices(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="qwen_coder", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_parallel_tool_calls_stream_through_with_their_indexes(client: openai.OpenAI) -> None:
    tools: list[openai.types.chat.ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("get_weather", "get_time")
    ]
    stream = client.chat.completions.create(
        model="qwen_coder", messages=HELLO, tools=tools, tool_choice="required", stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += call.function.name or "" if call.function else ""
            entry["arguments"] += call.function.arguments or "" if call.function else ""
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert all(json.loads(call["arguments"]) == {"text": "hola capibara"} for call in calls.values())
    assert all(call["id"].startswith("call_") for call in calls.values())


def test_vendor_fields_reach_the_upstream_unchanged(client: openai.OpenAI, upstream: Upstream) -> None:
    vendor = {"chat_template_kwargs": {"enable_thinking": False}, "top_k": 20, "min_p": 0.05}
    raw = client.chat.completions.with_raw_response.create(
        model="capibara6", messages=HELLO, seed=7, logprobs=True, top_logprobs=2, stop=["\n"], extra_body=vendor
    )
    sent = json.loads(upstream.request(raw.headers["x-request-id"])["body"])
    assert {key: sent[key] for key in vendor} == vendor
    assert (sent["seed"], sent["logprobs"], sent["top_logprobs"], sent["stop"]) == (7, True, 2, ["\n"])


def test_async_client_completes_and_streams(facade_url: str) -> None:
    async def scenario() -> tuple[str | None, str]:
        async with openai.AsyncOpenAI(base_url=facade_url + "/v1", api_key="k", max_retries=0) as sdk:
            completion = await sdk.chat.completions.create(model="mistral_balanced", messages=HELLO)
            stream = await sdk.chat.completions.create(model="mistral_balanced", messages=HELLO, stream=True)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            return completion.choices[0].message.content, text

    whole, streamed = asyncio.run(scenario())
    assert whole == streamed == "Hola! You said: hola capibara"


# --- every error path raises the SDK's matching exception class -----------------------------------


def test_missing_messages_raises_bad_request_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="capibara6", messages=[])
    assert caught.value.param == "messages"


def test_a_wrongly_typed_field_raises_bad_request_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="capibara6", messages=HELLO, extra_body={"temperature": "warm"})
    assert caught.value.param == "temperature"


def test_an_unknown_model_raises_not_found_listing_what_exists(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert "capibara6" in caught.value.message and "qwen_coder" in caught.value.message


def test_a_body_over_the_limit_is_refused_with_413(client: openai.OpenAI) -> None:
    huge = [{"role": "user", "content": "x" * 70_000}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="capibara6", messages=huge)  # type: ignore[arg-type]
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"


def test_an_unreachable_upstream_raises_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="offline", messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"


def test_a_slow_upstream_raises_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="capibara6", messages=HELLO, extra_body={"demo": {"delay": 3}})
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_an_upstream_rate_limit_passes_through_as_rate_limit_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="capibara6", messages=HELLO, extra_body={"demo": {"status": 429}})
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == "demo fault 429"


def test_an_upstream_error_on_a_stream_request_is_an_ordinary_error_response(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="capibara6", messages=HELLO, stream=True, extra_body={"demo": {"status": 503}}
        )
    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_error"


@pytest.mark.parametrize("plain", [True, False], ids=["plain-text", "json"])
def test_an_upstream_500_keeps_its_status_but_never_shows_its_text(client: openai.OpenAI, plain: bool) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="capibara6", messages=HELLO, extra_body={"demo": {"status": 500, "plain_error": plain}}
        )
    assert caught.value.status_code == 500
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "upstream_error"
    assert "/srv/model" not in caught.value.message
    assert "demo fault" not in caught.value.message


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 400, "plain_error": True}, id="non-json-400"),
        pytest.param({"status": 401}, id="upstream-refused-the-facades-key"),
        pytest.param({"status": 302}, id="redirect"),
    ],
)
def test_upstream_trouble_the_client_cannot_fix_is_a_502_without_upstream_text(
    client: openai.OpenAI, fault: dict[str, object]
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="capibara6", messages=HELLO, extra_body={"demo": fault})
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert "Traceback" not in caught.value.message and "demo fault" not in caught.value.message


def test_an_upstream_json_400_reaches_the_client_as_it_is(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="capibara6", messages=HELLO, extra_body={"demo": {"status": 400}})
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == "demo fault 400"


def test_an_upstream_dying_mid_stream_raises_api_error_after_the_delivered_chunks(client: openai.OpenAI) -> None:
    received = []
    stream = client.chat.completions.create(
        model="capibara6", messages=HELLO, stream=True, extra_body={"demo": {"drop_after": 4}}
    )
    with pytest.raises(openai.APIError) as caught:
        received.extend(stream)
    assert len(received) == 3  # role delta, two words; the `: ping` comment is not a chunk
    assert "broke off" in caught.value.message
