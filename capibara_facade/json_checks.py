"""Two things about a JSON body that msgspec does not check, both in linear time and cheap on everyday bodies.

- **Nesting depth.** msgspec recurses once per level, so a body nested ~1,000 deep raises `RecursionError`,
  and a model server's own parser may fare worse. `nested_deeper_than()` answers from the body's brackets
  alone, before anything is decoded; brackets inside strings do not count.
- **Repeated keys.** A JSON object may repeat a key, and decoders disagree on which value wins (msgspec
  keeps the last, others the first), so a body could be validated with one value and acted on with another.
  `repeated_key()` names a top-level key that appears more than once.
"""

from __future__ import annotations

import msgspec

__all__ = ["nested_deeper_than", "repeated_key"]

_ESCAPED = b"\\/bfnrtu"  # a backslash, and what may follow one in a JSON string besides a quote
_KEPT = b'[]{}"' + _ESCAPED
_ALL_BUT_KEPT = bytes(sorted(set(range(256)) - set(_KEPT)))
_CURLY_AS_SQUARE = bytes.maketrans(b"{}", b"[]")  # depth does not depend on the kind of container


def nested_deeper_than(body: bytes, max_depth: int) -> bool:
    """Whether arrays and objects in `body` nest more than `max_depth` levels deep.

    A body whose brackets do not pair up is not JSON: it is left to the decoder to refuse (and its own
    recursion limit, caught by the caller, bounds the work)."""
    # One pass keeps the brackets, the quotes and what escapes are made of (every escape stays whole, so
    # the backslashes still pair up as a decoder pairs them), and drops everything else.
    kept = body.translate(_CURLY_AS_SQUARE, _ALL_BUT_KEPT)
    if kept.count(b"[") <= max_depth:  # everyday bodies stop here: too few brackets to nest that deep
        return False
    if b"\\" in kept:  # escaped backslashes and quotes end no string: drop them, left to right
        kept = kept.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = kept.translate(None, _ESCAPED)
    brackets = b"".join(structure.split(b'"')[::2])  # outside strings: every other piece between quotes
    # Each pass removes the innermost level (every "[]" pair): a body still standing after max_depth passes
    # is deeper than that. Each pass is a C-speed scan of the brackets alone.
    for _ in range(max_depth):
        inner = brackets.replace(b"[]", b"")
        if not inner or len(inner) == len(brackets):
            return False
        brackets = inner
    return True


class _Key(str):
    """A decoded key that equals only itself, so that a dict decoded with these keys keeps every occurrence
    of a repeated one. msgspec makes them with `str.__new__`, in C: no Python call per key."""

    __slots__ = ()
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


_members_decoder = msgspec.json.Decoder(dict[_Key, msgspec.Raw], dec_hook=str.__new__)


def repeated_key(body: bytes) -> str | None:
    """The first top-level key that `body` (a JSON object) repeats, or None. Escapes are decoded first,
    so `"mo\\u0064el"` repeats `"model"`; values are skipped, not decoded."""
    members = _members_decoder.decode(body)
    if len(set(map(str, members))) == len(members):
        return None
    seen: set[str] = set()
    for key in map(str, members):
        if key in seen:
            return key
        seen.add(key)
    return None  # not reached: some key is in `members` twice
