"""Request validation and the rewrite: only `model`, defaults and caps change; every other byte is kept."""

from __future__ import annotations

import json

import msgspec
import pytest

from capibara_facade.catalog import Route
from capibara_facade.config import CompatConfig, ServerConfig
from capibara_facade.errors import InvalidRequest
from capibara_facade.wire import hides_usage, read_chat, rename_model, upstream_body

MAX_DEPTH = ServerConfig().max_json_depth
BODY = (
    b'{"model": "capibara6", "messages": [{"role": "user", "content": "caf\\u00e9"}],'
    b' "vendor": {"deep": [1.50, 2e3]}, "stream": true}'
)


def test_a_route_without_changes_sends_the_clients_own_bytes() -> None:
    route = Route("phi4_fast", "default", "phi4_fast", stream_usage=False)
    assert upstream_body(BODY, read_chat(BODY, MAX_DEPTH), route) is BODY
    asks_usage = BODY[:-1] + b', "stream_options": {"include_usage": true}}'
    assert (
        upstream_body(asks_usage, read_chat(asks_usage, MAX_DEPTH), Route("phi4_fast", "default", "phi4_fast"))
        is asks_usage
    )


def test_an_alias_changes_model_and_keeps_every_other_value_byte_for_byte() -> None:
    route = Route("capibara6", "default", "aya_expanse_multilingual")
    sent = upstream_body(BODY, read_chat(BODY, MAX_DEPTH), route)
    assert b'"model":"aya_expanse_multilingual"' in sent
    assert b'"content": "caf\\u00e9"' in sent  # the escape is not decoded and re-encoded
    assert b'"vendor":{"deep": [1.50, 2e3]}' in sent  # nor are numbers reformatted


def test_defaults_fill_absent_or_null_fields_only() -> None:
    defaults = {"temperature": msgspec.Raw(b"0.2"), "top_p": msgspec.Raw(b"0.9"), "seed": msgspec.Raw(b"1")}
    route = Route("a", "default", "m", defaults=defaults)
    body = b'{"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": 1, "top_p": null}'
    sent = json.loads(upstream_body(body, read_chat(body, MAX_DEPTH), route))
    assert (sent["temperature"], sent["top_p"], sent["seed"]) == (1, 0.9, 1)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ({}, {"max_tokens": 100}),
        ({"max_tokens": 500}, {"max_tokens": 100}),
        ({"max_tokens": 50}, {"max_tokens": 50}),
        ({"max_completion_tokens": 900}, {"max_completion_tokens": 100}),
    ],
)
def test_the_max_tokens_cap_is_a_ceiling(asked: dict[str, int], expected: dict[str, int]) -> None:
    route = Route("a", "default", "a", max_tokens=100)
    body = json.dumps({"model": "a", "messages": [{"role": "user", "content": "x"}], **asked}).encode()
    sent = json.loads(upstream_body(body, read_chat(body, MAX_DEPTH), route))
    assert {key: sent[key] for key in ("max_tokens", "max_completion_tokens") if key in sent} == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}', "temperature"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
            "tools[0].function",
        ),
        (b'{"model": "m", "messages": [{"role": "assistant"}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1.5}', "n"),
        (b'{"model": "m", "messages": [{"role": "tool", "content": "42"}]}', "messages[0].tool_call_id"),
        (
            b'{"model": "m", "messages": [{"role": "system", "content": [{"text": "x"}]}]}',
            "messages[0].content[0].type",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}', "stop"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "always"}', "tool_choice"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web"}]}',
            "tools[0].type",
        ),
        (b"not json", None),
    ],
)
def test_invalid_requests_name_the_offending_field(body: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_chat(body, MAX_DEPTH)
    assert caught.value.status == 400
    if param is not None:
        assert caught.value.param == param


def test_an_assistant_turn_with_only_tool_calls_is_valid() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = json.dumps({"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [call]}]})
    assert read_chat(body.encode(), MAX_DEPTH).messages[0].tool_calls


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_token_limit_of_zero_is_accepted_as_the_spec_sets_no_minimum(field: str) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], field: 0}).encode()
    assert getattr(read_chat(body, MAX_DEPTH), field) == 0


def test_an_assistant_turn_with_null_content_and_a_legacy_function_call_is_accepted() -> None:
    turn = {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}
    body = json.dumps({"model": "m", "messages": [turn]}).encode()
    assert read_chat(body, MAX_DEPTH).messages[0].function_call


def test_a_function_message_with_null_content_is_accepted_but_not_one_without_content() -> None:
    turn = {"role": "function", "name": "f", "content": None}
    assert read_chat(json.dumps({"model": "m", "messages": [turn]}).encode(), MAX_DEPTH)
    del turn["content"]
    with pytest.raises(InvalidRequest) as caught:
        read_chat(json.dumps({"model": "m", "messages": [turn]}).encode(), MAX_DEPTH)
    assert caught.value.param == "messages[0].content"


def test_custom_tools_and_custom_tool_calls_are_accepted() -> None:
    call = {"id": "c1", "type": "custom", "custom": {"name": "sql", "input": "select 1"}}
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "1"},
            ],
            "tools": [{"type": "custom", "custom": {"name": "sql"}}],
        }
    ).encode()
    assert read_chat(body, MAX_DEPTH).tools


def test_unknown_fields_are_skipped_wherever_they_are() -> None:
    turn = {"role": "user", "content": [{"type": "text", "text": "x", "cache": [1, {"a": None}]}], "vendor": 1}
    body = json.dumps({"model": "m", "messages": [turn], "store": True, "vendor_extension": {"x": [1.5]}}).encode()
    assert read_chat(body, MAX_DEPTH).model == "m"


def test_null_is_refused_where_the_spec_does_not_allow_it() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": null}'
    with pytest.raises(InvalidRequest) as caught:
        read_chat(body, MAX_DEPTH)
    assert caught.value.param == "tools"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "model": "phi4_fast"}',
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "mo\\u0064el": "phi4_fast"}',
    ],
    ids=["plain", "escaped"],
)
def test_a_repeated_top_level_key_is_refused_naming_the_key(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_chat(body, MAX_DEPTH)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "model", "duplicate_parameter")


def test_a_body_nested_deeper_than_the_limit_is_refused_naming_the_limit() -> None:
    def nested(depth: int) -> bytes:  # the body's own object is the first level
        vendor = b"[" * (depth - 1) + b"]" * (depth - 1)
        return b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "vendor": ' + vendor + b"}"

    assert read_chat(nested(MAX_DEPTH), MAX_DEPTH).model == "m"
    for depth in (MAX_DEPTH + 1, 1_000, 100_000):
        with pytest.raises(InvalidRequest) as caught:
            read_chat(nested(depth), MAX_DEPTH)
        assert caught.value.status == 400
        assert caught.value.code == "json_too_deep"
        assert f"more than {MAX_DEPTH} levels" in caught.value.message


def test_a_body_deeper_than_the_decoder_can_recurse_is_a_400_whatever_the_limit() -> None:
    body = (
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "vendor": '
        + b"[" * 5_000
        + b"]" * 5_000
        + b"}"
    )
    with pytest.raises(InvalidRequest) as caught:
        read_chat(body, 1_000_000)
    assert caught.value.code == "json_too_deep"


def test_brackets_inside_a_string_do_not_count_towards_the_depth() -> None:
    brackets = "[{" * 10_000 + '\\" \\\\ ]'
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": brackets}]}).encode()
    assert read_chat(body, MAX_DEPTH).messages[0].content == brackets


def test_image_content_parts_are_valid() -> None:
    parts = [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": parts}]}).encode()
    assert read_chat(body, MAX_DEPTH).messages[0].content


def test_rename_model_touches_only_the_model_field() -> None:
    document = b'{"id":"x","model":"aya","choices":[{"delta":{"content":"\\u00e9"}}]}'
    assert (
        rename_model(document, "capibara6")
        == b'{"id":"x","model":"capibara6","choices":[{"delta":{"content":"\\u00e9"}}]}'
    )
    assert rename_model(b"[DONE]", "capibara6") == b"[DONE]"


def test_stream_usage_asks_for_usage_on_every_stream_and_hides_it_from_clients_that_did_not_ask() -> None:
    route = Route("m", "default", "m", stream_usage=True)
    streaming = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}'
    assert json.loads(upstream_body(streaming, read_chat(streaming, MAX_DEPTH), route))["stream_options"] == {
        "include_usage": True
    }
    assert hides_usage(read_chat(streaming, MAX_DEPTH), route)
    declined = streaming[:-1] + b', "stream_options": {"include_usage": false, "include_obfuscation": false}}'
    sent = json.loads(upstream_body(declined, read_chat(declined, MAX_DEPTH), route))
    assert sent["stream_options"] == {"include_usage": True, "include_obfuscation": False}
    assert hides_usage(read_chat(declined, MAX_DEPTH), route)
    asked = streaming[:-1] + b', "stream_options": {"include_usage": true}}'
    assert upstream_body(asked, read_chat(asked, MAX_DEPTH), route) is asked
    assert not hides_usage(read_chat(asked, MAX_DEPTH), route)
    whole = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    assert upstream_body(whole, read_chat(whole, MAX_DEPTH), route) is whole
    assert not hides_usage(read_chat(whole, MAX_DEPTH), route)


def test_compat_mirrors_max_completion_tokens_into_max_tokens_for_upstreams_that_ignore_it() -> None:
    route = Route("m", "default", "m", max_tokens=50, compat=CompatConfig(max_tokens_from_max_completion_tokens=True))
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 80}'
    sent = json.loads(upstream_body(body, read_chat(body, MAX_DEPTH), route))
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (50, 50)
    plain = Route("m", "default", "m", compat=CompatConfig(max_tokens_from_max_completion_tokens=True))
    sent = json.loads(upstream_body(body, read_chat(body, MAX_DEPTH), plain))
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (80, 80)


def test_compat_sends_empty_content_for_assistant_tool_call_turns_and_keeps_the_rest() -> None:
    route = Route("m", "default", "m", compat=CompatConfig(empty_content_for_tool_calls=True))
    body = (
        b'{"model": "m", "messages": [{"role": "user", "content": "caf\\u00e9"},'
        b' {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",'
        b' "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c", "content": "1"}]}'
    )
    sent = upstream_body(body, read_chat(body, MAX_DEPTH), route)
    messages = json.loads(sent)["messages"]
    assert messages[1]["content"] == ""
    assert messages[1]["tool_calls"][0]["id"] == "c"
    assert b'"content":"caf\\u00e9"' in sent  # values keep their bytes; only whitespace between fields goes
    untouched = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    assert upstream_body(untouched, read_chat(untouched, MAX_DEPTH), route) is untouched


def test_store_and_metadata_are_removed_before_the_upstream_unless_its_compat_keeps_them() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "store": true, "metadata": {"k": "v"}}'
    sent = json.loads(upstream_body(body, read_chat(body, MAX_DEPTH), Route("m", "default", "m", stream_usage=False)))
    assert "store" not in sent and "metadata" not in sent and sent["messages"] == [{"role": "user", "content": "x"}]
    keeps = Route("m", "default", "m", stream_usage=False, compat=CompatConfig(strip_store=False))
    assert upstream_body(body, read_chat(body, MAX_DEPTH), keeps) is body


def test_metadata_must_map_strings_to_strings() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": {"k": 1}}'
    with pytest.raises(InvalidRequest) as refused:
        read_chat(body, MAX_DEPTH)
    assert refused.value.param is not None and refused.value.param.startswith("metadata")
