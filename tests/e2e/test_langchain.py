"""LangChain's `ChatOpenAI` (langchain-openai) with `base_url` at the facade and llama.cpp behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from tests.e2e.harness import API_KEY, WEATHER_TOOL, Facade

pytestmark = pytest.mark.e2e

TOKENS = 12


def chat_model(facade: Facade, **settings: Any) -> ChatOpenAI:
    """ChatOpenAI sends its `max_tokens` setting as `max_completion_tokens`, which llama.cpp ignores (see
    test_max_tokens_set_on_chat_openai_caps_the_answer); the length cap rides in `extra_body` instead."""
    options: dict[str, Any] = {
        "model": "phi4_fast",
        "temperature": 0,
        "max_retries": 0,
        "extra_body": {"max_tokens": TOKENS},
    }
    return ChatOpenAI(base_url=facade.url + "/v1", api_key=API_KEY, timeout=60, **(options | settings))


def test_max_tokens_set_on_chat_openai_caps_the_answer(facade: Facade) -> None:
    model = ChatOpenAI(
        base_url=facade.url + "/v1", api_key=API_KEY, model="phi4_fast", max_tokens=TOKENS, max_retries=0, timeout=60
    )
    pieces = 0
    for chunk in model.stream("hello"):  # streamed, so that an unbounded answer can be left after a few more
        pieces += bool(chunk.content)
        if pieces > TOKENS + 5:
            break
    assert pieces == TOKENS


def test_invoke_returns_the_answer_with_usage_metadata(facade: Facade) -> None:
    answer = chat_model(facade).invoke("hello world, how are you")
    assert isinstance(answer, AIMessage)
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.response_metadata["finish_reason"] == "length"
    assert answer.response_metadata["model_name"] == "phi4_fast"
    usage = answer.usage_metadata
    assert usage is not None
    assert usage["output_tokens"] == TOKENS
    assert usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_stream_yields_token_chunks_that_add_up_to_the_invoked_answer(facade: Facade) -> None:
    model = chat_model(facade)
    whole = model.invoke("tell me about rivers").content
    chunks = list(model.stream("tell me about rivers"))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert len([chunk for chunk in chunks if chunk.content]) == TOKENS
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == whole
    assert merged.response_metadata.get("finish_reason") == "length"


def test_batch_answers_each_prompt_as_invoke_would(facade: Facade) -> None:
    model = chat_model(facade)
    prompts = ["hola mundo", "the river and the sea", "capybara in the forest"]
    answers = model.batch(prompts)
    assert [answer.content for answer in answers] == [model.invoke(prompt).content for prompt in prompts]
    assert len({answer.content for answer in answers}) == len(prompts)


def test_ainvoke_answers_as_invoke_does(facade: Facade) -> None:
    model = chat_model(facade, model="capibara6")
    answer = asyncio.run(model.ainvoke("buenos dias"))
    assert answer.content == model.invoke("buenos dias").content
    assert answer.response_metadata["model_name"] == "aya_expanse_multilingual"


def test_bind_tools_with_a_forced_tool_choice_returns_a_parsed_tool_call(facade: Facade) -> None:
    model = chat_model(facade, model="qwen_coder", extra_body=None).bind_tools(
        [WEATHER_TOOL], tool_choice="get_weather"
    )
    answer = model.invoke("what is the weather in madrid")
    assert isinstance(answer, AIMessage)
    assert answer.invalid_tool_calls == []
    assert len(answer.tool_calls) == 1
    call = answer.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"]
    assert call["args"]["city"] in ("paris", "madrid", "lisbon")
    assert isinstance(call["args"]["days"], int) and isinstance(call["args"]["metric"], bool)


def test_a_tool_result_sent_back_gets_an_answer(facade: Facade) -> None:
    """The full tool loop: LangChain sends the assistant's tool call back with `content: null`."""
    model = chat_model(facade, model="qwen_coder", extra_body=None)
    forced = model.bind_tools([WEATHER_TOOL], tool_choice="get_weather")
    question = HumanMessage("what is the weather in lisbon")
    call = forced.invoke([question])
    assert call.tool_calls
    result = ToolMessage("sunny, 23 degrees", tool_call_id=call.tool_calls[0]["id"])
    answer = model.bind(extra_body={"max_tokens": TOKENS}).invoke([question, call, result])
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.response_metadata["finish_reason"] == "length"
