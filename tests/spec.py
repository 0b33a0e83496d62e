"""OpenAI's `CreateChatCompletionRequest`, read from the spec itself: one self-contained JSON Schema, the
requests it allows (a Hypothesis strategy) and a validator that says whether the spec allows a request.

The spec (`../shared/openai-openapi/openapi.yaml`, beside the repository) is OpenAPI 3.1 written partly in
3.0's dialect, so every `$ref` is inlined, `nullable: true` becomes "or null", and annotations
(descriptions, examples, `x-*`) are dropped. One rule the spec states only in prose is added, the only
change to what it allows: an assistant message needs `content` unless it has `tool_calls` or
`function_call`.

Requests are drawn by `requests()`, a small schema-to-strategy translation covering the keywords this
schema uses (hypothesis-jsonschema 0.23 no longer runs on current Hypothesis: its object strategy calls a
private `many.more()` that is gone). Every request drawn is then checked by `jsonschema` against the
same schema, so a mistake here can only drop requests, never pass off an invalid one as valid.
"""

from __future__ import annotations

import functools
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT.parent / "shared" / "openai-openapi" / "openapi.yaml"

Schema = dict[str, Any]

_REF_PREFIX = "#/components/schemas/"
_ANNOTATIONS = {"description", "title", "example", "default", "deprecated", "discriminator", "nullable"}
PROSE_RULE = "spec prose: an assistant message's content is required unless tool_calls or function_call is specified"
_ASSISTANT_NEEDS_CONTENT_OR_A_CALL: Schema = {
    "$comment": PROSE_RULE,
    "anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"minItems": 1}}},
        {"required": ["function_call"], "properties": {"function_call": {"not": {"type": "null"}}}},
    ],
}


@functools.cache
def chat_request_schema() -> Schema:
    """`CreateChatCompletionRequest` with every reference resolved; fails (never skips) without the spec."""
    assert SPEC.is_file(), (
        f"The OpenAI spec is missing: expected {SPEC} (the shared/ directory beside the repository). "
        "The property tests derive valid and invalid chat requests from it."
    )
    with SPEC.open("rb") as file:
        schemas: dict[str, Schema] = yaml.load(file, Loader=yaml.CSafeLoader)["components"]["schemas"]
    assistant = schemas["ChatCompletionRequestAssistantMessage"]
    schemas["ChatCompletionRequestAssistantMessage"] = {"allOf": [assistant, _ASSISTANT_NEEDS_CONTENT_OR_A_CALL]}
    return _inline(schemas["CreateChatCompletionRequest"], schemas, ())


def _inline(node: Any, schemas: dict[str, Schema], seen: tuple[str, ...]) -> Any:
    """`node` as plain JSON Schema: references inlined, `nullable` spelt out, annotations left out."""
    if isinstance(node, list):
        return [_inline(item, schemas, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].removeprefix(_REF_PREFIX)
        assert name not in seen, f"recursive schema {' -> '.join((*seen, name))}: cannot be inlined"
        return _inline(schemas[name], schemas, (*seen, name))
    schema: Schema = {}
    for key, value in node.items():
        if key in _ANNOTATIONS or key.startswith("x-"):
            continue
        if key == "properties":  # property names are data, not keywords: "description" may be one
            schema[key] = {name: _inline(child, schemas, seen) for name, child in value.items()}
        else:
            schema[key] = _inline(value, schemas, seen)
    return {"anyOf": [schema, {"type": "null"}]} if node.get("nullable") is True else schema


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(chat_request_schema())


def spec_allows(request: Any) -> bool:
    return bool(_validator().is_valid(request))


def allows(schema: Schema, value: Any) -> bool:
    """Whether a part of the spec's schema allows `value`."""
    return bool(Draft202012Validator(schema).is_valid(value))


def requests() -> st.SearchStrategy[dict[str, Any]]:
    """Chat-completion requests the spec allows, unknown fields included (they are allowed everywhere)."""
    return st.deferred(lambda: values(chat_request_schema()).filter(spec_allows))


_ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_UNKNOWN_NAMES = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)
_MAX_EXTRA_ITEMS = 2  # arrays get at most this many items beyond their minimum: requests stay small


def values(schema: Schema) -> st.SearchStrategy[Any]:
    """Values that (nearly always) match `schema`; `oneOf`'s "exactly one" is left to the final check."""
    merged = _merged(schema)
    if merged is None:
        return st.nothing()
    for keyword in ("anyOf", "oneOf"):
        if keyword in merged:
            rest = {key: value for key, value in merged.items() if key != keyword}
            branches = [values({"allOf": [rest, branch]}) for branch in merged[keyword]]
            # One branch, then a value from it: each kind of message, say, as likely as another.
            return st.sampled_from([branch for branch in branches if not branch.is_empty]).flatmap(
                lambda branch: branch
            )
    if "not" in merged:
        rest, excluded = {key: value for key, value in merged.items() if key != "not"}, merged["not"]
        if excluded == {"type": rest.get("type")}:
            return st.nothing()
        return values(rest).filter(lambda value: not allows(excluded, value))
    if "enum" in merged:
        return st.sampled_from(merged["enum"])
    kind = merged.get("type", "object" if "properties" in merged else None)
    if kind == "object":
        return _objects(merged)
    if kind == "array":
        low = merged.get("minItems", 0)
        high = min(merged.get("maxItems", low + _MAX_EXTRA_ITEMS), low + _MAX_EXTRA_ITEMS)
        return st.lists(values(merged.get("items", {})), min_size=low, max_size=high)
    low, high = merged.get("minimum"), merged.get("maximum")
    scalars: dict[Any, st.SearchStrategy[Any]] = {
        None: _ANY_JSON,
        "null": st.none(),
        "boolean": st.booleans(),
        "string": st.text(max_size=min(merged.get("maxLength", 20), 20)),
        "integer": st.integers(min_value=low, max_value=high),
        "number": st.integers(min_value=low, max_value=high)
        | st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False),
    }
    return scalars[kind]


def _objects(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Schema] = schema.get("properties", {})
    required = schema.get("required", [])
    declared = st.fixed_dictionaries(
        {name: values(properties.get(name, {})) for name in required},
        optional={name: values(child) for name, child in properties.items() if name not in required},
    )
    extra = schema.get("additionalProperties", True)
    if extra is False:
        return declared
    unknown = st.dictionaries(
        _UNKNOWN_NAMES.filter(lambda name: name not in properties),
        _ANY_JSON if extra is True else values(extra),
        max_size=2,
    )
    return st.tuples(declared, unknown).map(lambda pair: {**pair[1], **pair[0]})


def _merged(schema: Schema) -> Schema | None:
    """`schema` with its `allOf` folded in: one schema, or None when its parts cannot all hold."""
    if "allOf" not in schema:
        return schema
    merged: Schema = {}
    for part in [{key: value for key, value in schema.items() if key != "allOf"}, *schema["allOf"]]:
        flat = _merged(part)
        if flat is None:
            return None
        for key, value in flat.items():
            if key not in merged or merged[key] == value:
                merged[key] = value
            elif key == "properties":
                both = [name for name in value if name in merged[key]]  # a list: the same order every run
                merged[key] = {
                    **merged[key],
                    **value,
                    **{name: {"allOf": [merged[key][name], value[name]]} for name in both},
                }
            elif key == "required":
                merged[key] = [*merged[key], *(name for name in value if name not in merged[key])]
            elif key in ("minimum", "minItems"):
                merged[key] = max(merged[key], value)
            elif key in ("maximum", "maxItems", "maxLength"):
                merged[key] = min(merged[key], value)
            elif key == "type":  # e.g. a nullable field's "null" branch, where another part wants an integer
                return None
            else:
                raise AssertionError(f"tests/spec.py cannot fold two different {key!r} into one schema yet")
    return merged
