"""`read_chat` against OpenAI's own spec: whatever `CreateChatCompletionRequest` allows is accepted, and a
valid request broken in one field the facade validates is refused with a 400 naming that field.

Requests come from the spec's schema (`tests/spec.py`); a mutation is kept only when the spec's validator
agrees that it makes the request invalid, so these tests hold the facade to the spec, not to itself.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capibara_facade.config import ServerConfig
from capibara_facade.errors import InvalidRequest
from capibara_facade.wire import read_chat
from tests.spec import PROSE_RULE, Schema, allows, chat_request_schema, requests, spec_allows

MAX_DEPTH = ServerConfig().max_json_depth
# Bounded and deterministic for CI: the same examples on every run, no example database.
BOUNDED = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
)

# Every field the views in capibara_facade/chat_request.py validate, as a path with `[]` for any index.
# A field missing here is not mutated; one listed here that the views do not validate fails the test.
VALIDATED = {
    "model",
    "messages",
    "messages[]",
    "messages[].role",
    "messages[].name",
    "messages[].content",
    "messages[].content[]",
    "messages[].content[].type",
    "messages[].content[].text",
    "messages[].content[].refusal",
    "messages[].content[].image_url",
    "messages[].content[].image_url.url",
    "messages[].content[].image_url.detail",
    "messages[].content[].input_audio",
    "messages[].content[].input_audio.data",
    "messages[].content[].input_audio.format",
    "messages[].content[].file",
    "messages[].tool_calls",
    "messages[].tool_calls[]",
    "messages[].tool_calls[].id",
    "messages[].tool_calls[].type",
    "messages[].tool_calls[].function",
    "messages[].tool_calls[].function.name",
    "messages[].tool_calls[].function.arguments",
    "messages[].tool_calls[].custom",
    "messages[].tool_calls[].custom.name",
    "messages[].tool_calls[].custom.input",
    "messages[].function_call",
    "messages[].function_call.name",
    "messages[].function_call.arguments",
    "messages[].tool_call_id",
    "stream",
    "stream_options",
    "stream_options.include_usage",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stop[]",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "tools",
    "tools[]",
    "tools[].type",
    "tools[].function",
    "tools[].function.name",
    "tools[].custom",
    "tools[].custom.name",
    "tool_choice",
    "tool_choice.type",
    "tool_choice.function",
    "tool_choice.function.name",
    "tool_choice.custom",
    "tool_choice.custom.name",
    "tool_choice.allowed_tools",
    "tool_choice.allowed_tools.mode",
    "tool_choice.allowed_tools.tools",
    "tool_choice.allowed_tools.tools[]",
    "parallel_tool_calls",
    "response_format",
    "response_format.type",
    "response_format.json_schema",
    "response_format.json_schema.name",
    "functions",
    "functions[]",
    "functions[].name",
    "function_call",
    "function_call.name",
    "user",
}
# The spec bounds `seed` by ±9223372036854776000, just past int64, which msgspec constraints cannot
# express: the facade accepts any integer seed rather than refuse one the spec allows.
RANGE_NOT_VALIDATED = {"seed"}
# The spec contradicts itself on `top_logprobs`: CreateChatCompletionRequest makes it nullable, and the
# CreateModelResponseProperties it builds on (allOf) does not. The facade takes the request's own word.
NULL_TAKEN = {"top_logprobs"}

# One value of each JSON type, for "a value of a type the field does not take".
SAMPLES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "integer": 7,
    "number": 0.5,
    "string": "text",
    "array": [],
    "object": {},
}
NOT_IN_ANY_ENUM = "no-such-value"
LEFT_OUT = object()


def encode(request: Any) -> bytes:
    return json.dumps(request).encode()


@BOUNDED
@given(requests())
def test_every_request_the_spec_allows_is_accepted(request: dict[str, Any]) -> None:
    chat = read_chat(encode(request), MAX_DEPTH)
    assert chat.model == request["model"]
    assert len(chat.messages) == len(request["messages"])


@settings(BOUNDED, max_examples=100)  # each request is broken in every validated field it has (~16)
@given(requests(), st.randoms(use_true_random=True))
def test_a_request_broken_in_one_validated_field_is_refused_naming_that_field(
    request: dict[str, Any], chooser: random.Random
) -> None:
    refused = 0
    for field, broken in broken_requests(request, chooser):
        with pytest.raises(InvalidRequest) as caught:
            read_chat(encode(broken), MAX_DEPTH)
        assert (caught.value.status, caught.value.param) == (400, field), caught.value.message
        refused += 1
    assert refused  # every request has a `model` to break, at least


def test_the_validated_fields_are_all_fields_of_the_spec() -> None:
    """A misspelt entry in VALIDATED would silently never be mutated."""
    assert not {pattern for pattern in VALIDATED if not _spec_has(pattern)}


# --- Mutations -------------------------------------------------------------------------------------------


def broken_requests(request: dict[str, Any], chooser: random.Random) -> Iterator[tuple[str, dict[str, Any]]]:
    """Copies of `request` broken in one validated field each, with that field's path (the `param` a 400
    must name): each kind of field (`messages[].role` once, not once per message) broken each way it can
    be, the message and the exact value chosen at random. A mutation the spec still allows is passed over
    (`model` takes any string, so a value outside its enum of known models is no mistake)."""
    ways: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for field, way, value in mutations(request):
        ways.setdefault((re.sub(r"\[\d+\]", "[]", field), way), []).append((field, value))
    for key in sorted(ways):
        chooser.shuffle(ways[key])
        broken = ((field, _broken(request, field, value)) for field, value in ways[key])
        first = next((candidate for candidate in broken if not spec_allows(candidate[1])), None)
        if first is not None:
            yield first


def mutations(request: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """Ways to break one validated field of `request`, as (path, way, new value or LEFT_OUT): null where
    it is not allowed, a value of another wrong type, a number or a length out of range, a value outside
    an enum, a required field left out."""
    schema = chat_request_schema()
    for path, value, at in [("", request, schema), *_fields(request, schema, "")]:
        pattern = re.sub(r"\[\d+\]", "[]", path)
        if isinstance(value, dict):
            for name in sorted(_required(at, value)):
                if name in value and f"{pattern}.{name}".lstrip(".") in VALIDATED:
                    yield f"{path}.{name}".lstrip("."), "left out", LEFT_OUT
        if pattern not in VALIDATED:
            continue
        types = _types(at)
        for kind, sample in SAMPLES.items():
            if kind not in types and not (kind == "null" and pattern in NULL_TAKEN):
                yield path, "null" if kind == "null" else "wrong type", sample
        if pattern not in RANGE_NOT_VALIDATED:
            for wrong in _out_of_range(at, value):
                yield path, "out of range", wrong
        if _enums(at):
            yield path, "not in the enum", NOT_IN_ANY_ENUM


def _fields(value: Any, schema: Schema, path: str) -> Iterator[tuple[str, Any, Schema]]:
    """Every value inside `value` (itself excluded), with its path and the schema it answers to there."""
    parts = _parts(schema, value)
    children: list[tuple[str, Any, str | int]] = []
    if isinstance(value, dict):
        children = [(f"{path}.{name}".lstrip("."), child, name) for name, child in value.items()]
    elif isinstance(value, list):
        children = [(f"{path}[{index}]", child, index) for index, child in enumerate(value)]
    for child_path, child, key in children:
        child_schema = _child(parts, key)
        yield child_path, child, child_schema
        yield from _fields(child, child_schema, child_path)


def _parts(schema: Schema, value: Any) -> list[Schema]:
    """The schemas that apply to `value`: all of `allOf`, the branches of `anyOf`/`oneOf` it matches.
    The prose rule is left out: breaking it is breaking `content` (see test_wire.py), whichever call
    field the mutation took away."""
    if schema.get("$comment") == PROSE_RULE:
        return []
    found = [schema]
    for part in schema.get("allOf", []):
        found += _parts(part, value)
    for keyword in ("anyOf", "oneOf"):
        for branch in schema.get(keyword, []):
            if allows(branch, value):
                found += _parts(branch, value)
    return found


def _child(parts: list[Schema], key: str | int) -> Schema:
    if isinstance(key, int):
        return {"allOf": [part["items"] for part in parts if "items" in part]}
    found = [part["properties"][key] for part in parts if key in part.get("properties", {})]
    found += [part["additionalProperties"] for part in parts if isinstance(part.get("additionalProperties"), dict)]
    return {"allOf": found}


def _required(schema: Schema, value: Any) -> set[str]:
    return {name for part in _parts(schema, value) for name in part.get("required", [])}


def _types(schema: Schema) -> set[str]:
    """The JSON types a value may have under `schema` (an empty schema allows all)."""
    types = set(SAMPLES)
    if "type" in schema:
        types &= {schema["type"], "integer"} if schema["type"] == "number" else {schema["type"]}
    if "enum" in schema:
        types &= {_type_of(member) for member in schema["enum"]}
    for part in schema.get("allOf", []):
        types &= _types(part)
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            types &= set().union(*(_types(branch) for branch in schema[keyword]))
    return types


def _type_of(value: Any) -> str:
    kinds = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}
    return kinds.get(type(value), "array" if isinstance(value, list) else "object")


def _all_parts(schema: Schema) -> Iterator[Schema]:
    yield schema
    for keyword in ("allOf", "anyOf", "oneOf"):
        for part in schema.get(keyword, []):
            yield from _all_parts(part)


def _out_of_range(schema: Schema, value: Any) -> Iterator[Any]:
    for part in _all_parts(schema):
        if "minimum" in part:
            yield part["minimum"] - 1
        if "maximum" in part:
            yield part["maximum"] + 1
        if isinstance(value, list) and part.get("minItems", 0) > 0:
            yield value[: part["minItems"] - 1]
        if isinstance(value, list) and value and "maxItems" in part:
            yield [value[0]] * (part["maxItems"] + 1)


def _enums(schema: Schema) -> bool:
    return any("enum" in part for part in _all_parts(schema))


def _spec_has(pattern: str) -> bool:
    """Whether some branch of the spec's schema has a field at `pattern`."""
    schemas = [chat_request_schema()]
    for step in re.findall(r"[^.\[\]]+|\[\]", pattern):
        parts = [part for schema in schemas for part in _all_parts(schema)]
        if step == "[]":
            schemas = [part["items"] for part in parts if "items" in part]
        else:
            schemas = [part["properties"][step] for part in parts if step in part.get("properties", {})]
    return bool(schemas)


def _broken(request: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `request` with the value at `path` replaced by `value`, or left out (LEFT_OUT)."""
    copied = copy.deepcopy(request)
    steps: list[Any] = [int(step[1:-1]) if step[0] == "[" else step for step in re.findall(r"[^.\[\]]+|\[\d+\]", path)]
    container: Any = copied
    for step in steps[:-1]:
        container = container[step]
    if value is LEFT_OUT:
        del container[steps[-1]]
    else:
        container[steps[-1]] = value
    return copied
