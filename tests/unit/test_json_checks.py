"""The two checks msgspec does not make: nesting depth (brackets inside strings do not count) and repeated
top-level keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capibara_facade.json_checks import nested_deeper_than, repeated_key

# Strings made of what could fool a bracket count: brackets, quotes, backslashes and escapes.
TRICKY_TEXT = st.text(alphabet='[]{}"\\/bfnrtu\n é', max_size=12)
DOCUMENTS: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=40,
)


def depth(document: bytes) -> int:
    """How deep arrays and objects nest, counted the plain way: byte by byte, minding strings."""
    deepest = level = 0
    in_string = escaped = False
    for byte in document:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == ord("\\"), byte != ord('"'))
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            level += 1
            deepest = max(deepest, level)
        elif byte in b"]}":
            level -= 1
    return deepest


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(DOCUMENTS, st.booleans(), st.integers(min_value=0, max_value=12))
def test_the_depth_check_agrees_with_a_plain_count_on_any_document(document: Any, ascii: bool, limit: int) -> None:
    encoded = json.dumps(document, ensure_ascii=ascii).encode()
    assert nested_deeper_than(encoded, limit) == (depth(encoded) > limit)


@pytest.mark.parametrize(
    ("document", "deepest"),
    [
        (b"[" * 65 + b"]" * 65, 65),
        (b'{"a": "' + b"[{" * 100 + b'"}', 1),
        (b'["\\"' + b"[" * 100 + b'"]', 1),  # an escaped quote does not end the string
        (b'["\\\\", ' + b"[" * 99 + b"]" * 99 + b"]", 100),  # an escaped backslash does not escape the quote
        (b'["\\u005c", ' + b"[" * 99 + b"]" * 99 + b"]", 100),
        (b'[" \\n", "\\t", ' + b"[{" * 50 + b"}]" * 50 + b"]", 101),
    ],
)
def test_escapes_and_brackets_inside_strings_do_not_change_the_depth(document: bytes, deepest: int) -> None:
    assert depth(document) == deepest
    assert nested_deeper_than(document, deepest - 1)
    assert not nested_deeper_than(document, deepest)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"model": "a", "stream": true, "model": "b"}', "model"),
        (b'{"model": "a", "mo\\u0064el": "b"}', "model"),  # the same key, spelt with an escape
        (b'{"model": "a", "messages": [{"role": "user", "role": "system"}]}', None),  # not a top-level key
        (b'{"model": "a", "Model": "b"}', None),
    ],
)
def test_a_repeated_top_level_key_is_named(body: bytes, key: str | None) -> None:
    assert repeated_key(body) == key
