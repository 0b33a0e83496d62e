"""The official `openai` SDK, sync and async, with `base_url` at the facade and llama.cpp behind it."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.harness import API_KEY, MODELS_EUROPE, WEATHER_TOOL, Facade, LlamaServer

pytestmark = pytest.mark.e2e

HELLO: list[Any] = [{"role": "user", "content": "hello world, tell me about the capybara"}]
# The tiny model never ends an answer by itself: every answer runs to max_tokens (finish_reason "length").
SHORT = 12


def async_client(facade: Facade) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=facade.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_models_list_shows_the_five_models_europe_ids_and_the_capibara6_alias(sdk: openai.OpenAI) -> None:
    models = sdk.models.list()
    assert sorted(model.id for model in models.data) == sorted([*MODELS_EUROPE, "capibara6"])
    assert all(model.object == "model" and model.owned_by for model in models.data)


def test_models_retrieve_returns_the_named_model_and_raises_not_found_for_an_unknown_one(
    sdk: openai.OpenAI,
) -> None:
    assert sdk.models.retrieve("qwen_coder").id == "qwen_coder"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("gpt-17")
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("model", MODELS_EUROPE)
def test_each_models_europe_id_answers_a_plain_chat_completion(sdk: openai.OpenAI, model: str) -> None:
    completion = sdk.chat.completions.create(model=model, messages=HELLO, max_tokens=SHORT)
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == model
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == SHORT
    assert completion.usage.prompt_tokens > 0


def test_the_capibara6_alias_reaches_aya_and_answers_exactly_as_aya_does(sdk: openai.OpenAI) -> None:
    ask: dict[str, Any] = {"messages": HELLO, "max_tokens": SHORT, "temperature": 0.9, "seed": 3}
    via_alias = sdk.chat.completions.create(model="capibara6", **ask)
    direct = sdk.chat.completions.create(model="aya_expanse_multilingual", **ask)
    assert via_alias.model == "aya_expanse_multilingual"  # response_model = "upstream": the real model id
    assert via_alias.choices[0].message.content == direct.choices[0].message.content


def test_a_seed_gives_the_answer_llama_cpp_itself_gives_for_it_and_another_seed_another(
    sdk: openai.OpenAI, direct: httpx.Client
) -> None:
    """Sampled, so the seed decides the answer: it must reach the upstream as sent. (A greedy answer would prove
    nothing here: it ignores the seed, whatever the facade did with it.)"""
    ask: dict[str, Any] = {"model": "phi4_fast", "messages": HELLO, "max_tokens": 20, "temperature": 1.0}

    def via_facade(seed: int) -> str | None:
        return sdk.chat.completions.create(**ask, seed=seed).choices[0].message.content

    def from_llama_cpp(seed: int) -> str | None:
        reply = direct.post("/v1/chat/completions", json={**ask, "seed": seed})
        assert reply.status_code == 200, reply.text
        content: str | None = reply.json()["choices"][0]["message"]["content"]
        return content

    assert from_llama_cpp(1) != from_llama_cpp(2)  # the seed decides, so the checks below can fail
    assert via_facade(1) == from_llama_cpp(1) == via_facade(1)
    assert via_facade(2) == from_llama_cpp(2)


def test_a_stop_sequence_cuts_the_answer_just_before_it(sdk: openai.OpenAI) -> None:
    ask: dict[str, Any] = {"model": "phi4_fast", "messages": HELLO, "max_tokens": 20, "temperature": 0}
    full = sdk.chat.completions.create(**ask).choices[0].message.content or ""
    words = full.split()
    stop_word = next(word for word in words[2:] if word not in words[:2])
    stop = " " + stop_word
    cut = sdk.chat.completions.create(**ask, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]
    assert cut.message.content and stop not in cut.message.content


def test_max_completion_tokens_caps_the_answer_like_max_tokens(sdk: openai.OpenAI) -> None:
    """`max_completion_tokens` is the SDK's current name for the cap (and what LangChain sends)."""
    stream = sdk.chat.completions.create(model="phi4_fast", messages=HELLO, max_completion_tokens=SHORT, stream=True)
    pieces = 0
    with stream:
        for chunk in stream:  # streamed, so that an unbounded answer can be left after a few more tokens
            pieces += bool(chunk.choices and chunk.choices[0].delta.content)
            if pieces > SHORT + 5:
                break
    assert pieces == SHORT


def test_logprobs_come_back_for_every_generated_token(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="phi4_fast", messages=HELLO, max_tokens=SHORT, logprobs=True, top_logprobs=3
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert len(tokens) == SHORT
    assert "".join(token.token for token in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0
        alternatives = {alternative.token: alternative.logprob for alternative in token.top_logprobs}
        # llama.cpp quirk: the sampled token is added to the top 3 when it is not among them (4 entries).
        assert len(alternatives) in (3, 4)
        assert alternatives[token.token] == token.logprob
        assert len(alternatives) == 3 or token.logprob < sorted(alternatives.values())[1]


def test_a_named_tool_choice_forces_a_tool_call_whose_arguments_are_json(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="qwen_coder",
        messages=[{"role": "user", "content": "what is the weather in paris"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"] in ("paris", "madrid", "lisbon")
    assert isinstance(arguments["days"], int) and isinstance(arguments["metric"], bool)


def test_streamed_chunks_arrive_one_token_at_a_time_and_add_up_to_the_unstreamed_answer(
    sdk: openai.OpenAI,
) -> None:
    ask: dict[str, Any] = {"model": "mistral_balanced", "messages": HELLO, "max_tokens": 25, "seed": 11}
    whole = sdk.chat.completions.create(**ask, temperature=0.8).choices[0].message.content
    chunks = list(sdk.chat.completions.create(**ask, temperature=0.8, stream=True))
    # llama.cpp's shape: a role-only first delta, one delta per token, an empty delta with the finish reason.
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    pieces = [chunk.choices[0].delta.content for chunk in chunks[1:-1]]
    assert len(pieces) == 25 and all(pieces)
    assert "".join(piece or "" for piece in pieces) == whole
    assert chunks[-1].choices[0].finish_reason == "length" and not chunks[-1].choices[0].delta.content
    assert {chunk.id for chunk in chunks} == {chunks[0].id}


def test_image_content_parts_reach_the_model_template(sdk: openai.OpenAI) -> None:
    pixel = (  # a 1x1 PNG
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    text_only = sdk.chat.completions.create(
        model="gemma3_multimodal", messages=[{"role": "user", "content": "what is this"}], max_tokens=4
    )
    with_image = sdk.chat.completions.create(
        model="gemma3_multimodal",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": pixel}},
                ],
            }
        ],
        max_tokens=4,
    )
    assert with_image.choices[0].message.content
    assert text_only.usage is not None and with_image.usage is not None
    # The chat template renders the image part as an <image> placeholder: the prompt grew by its tokens.
    assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens


def test_with_raw_response_exposes_the_facade_headers(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="phi4_fast", messages=HELLO, max_tokens=3, extra_headers={"x-request-id": "e2e-raw-response-1"}
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.headers["x-request-id"] == "e2e-raw-response-1"
    assert raw.parse().choices[0].finish_reason == "length"


def test_a_request_without_messages_raises_bad_request_naming_the_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="phi4_fast", messages=[])
    assert caught.value.status_code == 400
    assert caught.value.param == "messages"


def test_an_out_of_range_temperature_raises_bad_request_naming_the_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="phi4_fast", messages=HELLO, temperature=7)
    assert caught.value.param == "temperature"


def test_an_unknown_model_raises_not_found_with_code_model_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="gpt-17", messages=HELLO)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-17", messages=HELLO, stream=True)


def test_a_wrong_api_key_raises_authentication_error(facade: Facade) -> None:
    wrong = openai.OpenAI(base_url=facade.url + "/v1", api_key="not-the-key", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model="phi4_fast", messages=HELLO)
    assert caught.value.status_code == 401


def test_the_async_client_lists_models_completes_streams_calls_tools_and_raises(facade: Facade) -> None:
    async def scenario() -> None:
        async with async_client(facade) as client:
            models = await client.models.list()
            assert "capibara6" in [model.id for model in models.data]

            ask: dict[str, Any] = {"model": "phi4_fast", "messages": HELLO, "max_tokens": 15, "temperature": 0}
            whole = (await client.chat.completions.create(**ask)).choices[0].message.content
            stream = await client.chat.completions.create(**ask, stream=True)
            pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
            assert len([piece for piece in pieces if piece]) == 15
            assert "".join(pieces) == whole

            forced = await client.chat.completions.create(
                model="phi4_fast",
                messages=[{"role": "user", "content": "weather in lisbon"}],
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )
            tool_calls = forced.choices[0].message.tool_calls
            assert tool_calls and json.loads(tool_calls[0].function.arguments)["city"] in ("paris", "madrid", "lisbon")

            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="gpt-17", messages=HELLO)
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="phi4_fast", messages=[])

    asyncio.run(scenario())


def test_parallel_streams_are_all_open_at_llama_cpp_at_once_and_each_gets_its_whole_answer(
    facade: Facade, llama: LlamaServer
) -> None:
    """llama.cpp generates one answer at a time, but sends a stream's response head at once, before it waits for
    the model; its log has a line for each head sent (uvicorn's access log) and the timings of each generation
    that ends. Every head logged before the first generation ended: all the streams were open upstream at
    once, which a facade serving one request at a time could not do. No clock is read."""
    long_tokens, short_tokens = 1500, 5

    async def answer(stream: openai.AsyncStream[Any]) -> tuple[int, str | None]:
        pieces, finish = 0, None
        async for chunk in stream:
            if chunk.choices:
                pieces += bool(chunk.choices[0].delta.content)
                finish = chunk.choices[0].finish_reason or finish
        return pieces, finish

    async def scenario() -> list[tuple[int, str | None]]:
        async with async_client(facade) as client:

            def ask(text: str, max_tokens: int) -> Any:
                messages: Any = [{"role": "user", "content": text}]
                return client.chat.completions.create(
                    model="phi4_fast", messages=messages, max_tokens=max_tokens, stream=True
                )

            first = await ask("tell me a long story", long_tokens)
            await anext(first)  # its role-only first chunk: llama.cpp is generating the long answer now
            others = await asyncio.gather(*(ask(f"count {n}", short_tokens) for n in range(3)))  # their heads
            return [await answer(stream) for stream in (first, *others)]

    log_start = llama.log_size()
    answers = asyncio.run(scenario())
    # The first answer's role-only chunk was read above, so each count is of the remaining content chunks.
    assert answers == [(long_tokens, "length"), *[(short_tokens, "length")] * 3]
    log = llama.log_since(log_start)
    first_generation_end = re.search(r"\beval time = ", log)
    assert first_generation_end, log[-3000:]
    heads = log[: first_generation_end.start()].count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert heads == 4, log[-3000:]
