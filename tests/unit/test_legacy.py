"""The frontend's /api/chat body becomes an OpenAI chat completion request."""

from __future__ import annotations

import json

import pytest

from capibara_facade.config import LegacyChatConfig, ServerConfig
from capibara_facade.errors import InvalidRequest
from capibara_facade.http.legacy import to_chat_completion

MAX_DEPTH = ServerConfig().max_json_depth


def test_a_bare_message_gets_the_contract_defaults() -> None:
    sent = json.loads(to_chat_completion(b'{"message": "hola"}', LegacyChatConfig(), MAX_DEPTH))
    assert sent == {
        "model": "aya_expanse_multilingual",
        "messages": [{"role": "user", "content": "hola"}],
        "temperature": 0.7,
        "max_tokens": 200,
    }


def test_stream_true_asks_for_a_stream() -> None:
    assert json.loads(to_chat_completion(b'{"message": "hola", "stream": true}', LegacyChatConfig(), MAX_DEPTH))[
        "stream"
    ]


def test_a_configured_system_prompt_leads_unless_the_client_sends_its_own() -> None:
    config = LegacyChatConfig(system="Eres capibara")
    assert (
        json.loads(to_chat_completion(b'{"message": "x"}', config, MAX_DEPTH))["messages"][0]["content"]
        == "Eres capibara"
    )
    own = json.loads(to_chat_completion('{"message": "x", "system": "Sé breve"}'.encode(), config, MAX_DEPTH))
    assert own["messages"][0] == {"role": "system", "content": "Sé breve"}


@pytest.mark.parametrize("body", [b"{}", b'{"message": ""}', b'{"message": 5}', b"nope"])
def test_a_body_without_a_usable_message_is_a_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        to_chat_completion(body, LegacyChatConfig(), MAX_DEPTH)


def test_a_bad_history_turn_is_named_by_the_index_the_client_sent_it_at() -> None:
    body = b'{"system": "s", "messages": [{"role": "user", "content": "a"}, {"role": "boss", "content": "b"}]}'
    with pytest.raises(InvalidRequest) as caught:
        to_chat_completion(body, LegacyChatConfig(), MAX_DEPTH)
    assert caught.value.param == "messages[1].role"


def test_a_body_that_is_not_an_object_is_a_400_without_a_param() -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_chat_completion(b"[1]", LegacyChatConfig(), MAX_DEPTH)
    assert caught.value.param is None


def test_an_assistant_history_turn_without_content_is_named_by_the_clients_index() -> None:
    body = b'{"system": "s", "messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}'
    with pytest.raises(InvalidRequest) as caught:
        to_chat_completion(body, LegacyChatConfig(), MAX_DEPTH)
    assert caught.value.param == "messages[1].content"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000])
def test_a_body_nested_deeper_than_the_limit_is_a_400_naming_the_limit(depth: int) -> None:
    body = b'{"message": "hola", "messages": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    with pytest.raises(InvalidRequest) as caught:
        to_chat_completion(body, LegacyChatConfig(), MAX_DEPTH)
    assert (caught.value.status, caught.value.code) == (400, "json_too_deep")
    assert f"more than {MAX_DEPTH} levels" in caught.value.message


def test_a_body_deeper_than_the_decoder_can_recurse_is_a_400_whatever_the_limit() -> None:
    body = b'{"message": "hola", "vendor": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    with pytest.raises(InvalidRequest) as caught:
        to_chat_completion(body, LegacyChatConfig(), 1_000_000)
    assert caught.value.code == "json_too_deep"
