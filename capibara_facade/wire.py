"""The few OpenAI shapes the facade reads or writes; every other byte passes through untouched.

`read_chat()` validates a chat-completion request against the fields we (or the upstream) rely on, exactly
as OpenAI's spec types them (nothing the spec allows is refused), and turns a client's mistake into a 400
that names the field, before it can reach a model server that would answer it with a 500. The body itself
is never rebuilt from these views: `upstream_body()` re-encodes only when a route demands it, and then as
`dict[str, msgspec.Raw]`, so every field but the ones we set keeps its exact bytes (vendor fields, escapes
and number formatting included).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import msgspec
from msgspec import Raw, Struct

from .catalog import Route
from .chat_request import AssistantMessage, ChatRequest, Message
from .errors import InvalidRequest
from .json_checks import nested_deeper_than, repeated_key

__all__ = [
    "ChatRequest",
    "Message",
    "ModelCard",
    "ModelList",
    "decoding",
    "hides_usage",
    "invalid",
    "invalid_json",
    "read_chat",
    "read_view",
    "relayed_body",
    "rename_model",
    "rename_response_model",
    "require_content",
    "too_deeply_nested",
    "upstream_body",
]


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


_chat_decoder = msgspec.json.Decoder(ChatRequest)
_fields_decoder = msgspec.json.Decoder(dict[str, Raw])
_encode = msgspec.json.Encoder().encode
_turns_decoder = msgspec.json.Decoder(list[dict[str, Raw]])
_number_decoder = msgspec.json.Decoder(int | float)  # int: a huge integer is no float
_TRUE = Raw(b"true")
_NULL = Raw(b"null")
V = TypeVar("V")


class _Streamed(Protocol):
    """What `hides_usage` reads of a request: chat's and completions' views both have it."""

    @property
    def stream(self) -> bool | None: ...

    @property
    def stream_options(self) -> _UsageOption | None: ...


class _UsageOption(Protocol):
    @property
    def include_usage(self) -> bool | msgspec.UnsetType: ...


@contextmanager
def decoding(body: bytes, max_depth: int) -> Iterator[None]:
    """Around decoding a request body: refuse it first when it nests deeper than `max_depth` (the server's
    `max_json_depth`), and turn msgspec's errors into 400s that name the field."""
    if nested_deeper_than(body, max_depth):
        raise too_deeply_nested(max_depth)
    try:
        yield
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None
    except msgspec.DecodeError:
        raise invalid_json() from None
    except RecursionError:  # a max_depth above msgspec's own limit (about 1,000 levels)
        raise too_deeply_nested(max_depth) from None


def read_view(decoder: msgspec.json.Decoder[V], body: bytes, max_depth: int) -> V:
    """Validate a request body into its view: a 400 naming the field for anything the OpenAI spec does not
    allow, a body nested deeper than `max_depth` or a top-level key repeated."""
    with decoding(body, max_depth):
        view = decoder.decode(body)
    repeated = repeated_key(body)
    if repeated is not None:  # msgspec kept the last value, a model server might read the first
        raise InvalidRequest(
            f"The request body has the key '{repeated}' more than once; send each parameter once.",
            param=repeated,
            code="duplicate_parameter",
        )
    return view


def read_chat(body: bytes, max_depth: int) -> ChatRequest:
    """Validate a chat-completion request body (see `read_view`), and the rule the spec states in prose."""
    chat = read_view(_chat_decoder, body, max_depth)
    for index, message in enumerate(chat.messages):
        require_content(message, index)
    return chat


def require_content(message: Message, index: int) -> None:
    """The one rule the spec states only in prose: an assistant message's content is "required unless
    `tool_calls` or `function_call` is specified" (every other role's content is required by its schema)."""
    if not isinstance(message, AssistantMessage) or message.content is not None:
        return
    if not (message.tool_calls or message.function_call):
        raise InvalidRequest(
            f"messages[{index}].content: an assistant message needs content, tool_calls or function_call.",
            param=f"messages[{index}].content",
        )


def too_deeply_nested(max_depth: int) -> InvalidRequest:
    return InvalidRequest(
        f"The JSON body of your request is nested more than {max_depth} levels deep, the most this server accepts.",
        code="json_too_deep",
    )


def invalid_json() -> InvalidRequest:
    return InvalidRequest(
        "We could not parse the JSON body of your request. The body must be a JSON object.", code="invalid_json"
    )


def invalid(exc: msgspec.ValidationError, prefix: str = "") -> InvalidRequest:
    """A msgspec validation error as a 400 naming the field (`prefix` is put before the field's path)."""
    # msgspec: "Object missing required field `messages`" or "Expected `str`, got `int` - at `$.model`".
    message, _, where = str(exc).partition(" - at `$")
    param = (prefix + where.rstrip("`")).lstrip(".") or None
    if message.startswith("Object missing required field `"):
        field = message.removeprefix("Object missing required field `").rstrip("`")
        param = f"{param}.{field}" if param else field
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if param is None:
        return InvalidRequest(f"Invalid request body: {message}.", code="invalid_type")
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


def hides_usage(chat: _Streamed, route: Route) -> bool:
    """Whether the facade asks the upstream for a stream's usage chunk that the client did not ask for (and so
    must keep from the client: OpenAI sends it only to clients that set `stream_options.include_usage`)."""
    asked = chat.stream_options is not None and chat.stream_options.include_usage is True
    return bool(route.stream_usage and chat.stream and not asked)


def upstream_body(body: bytes, chat: ChatRequest, route: Route, caller_cap: int | None = None) -> bytes:
    """The body to send upstream: the client's own bytes, or with only the fields a route demands changed:
    `model`, declared defaults and caps (the route's, and the caller's: the lower wins), streamed usage, and
    the upstream's compatibility fixes."""
    add_usage = hides_usage(chat, route)
    cap = route.max_tokens if caller_cap is None else min(caller_cap, route.max_tokens or caller_cap)
    compat = route.compat
    mirror_max_tokens = (
        compat.max_tokens_from_max_completion_tokens
        and chat.max_completion_tokens is not None
        and chat.max_tokens is None
    )
    fill_content = compat.empty_content_for_tool_calls and any(
        isinstance(message, AssistantMessage) and message.content is None and message.tool_calls
        for message in chat.messages
    )
    strip_store = compat.strip_store and (chat.store is not None or chat.metadata is not None)
    if not (
        route.rewrites_request
        or add_usage
        or mirror_max_tokens
        or fill_content
        or strip_store
        or caller_cap is not None
    ):
        return body
    fields = _fields_decoder.decode(body)
    fields["model"] = Raw(_encode(route.upstream_model))
    for key, value in route.defaults.items():
        if fields.get(key, _NULL) == _NULL:
            fields[key] = value
    if cap is not None:
        # On the final fields, so that neither the client nor a default gets past the ceiling.
        capped = Raw(_encode(cap))
        asked = [key for key in ("max_tokens", "max_completion_tokens") if fields.get(key, _NULL) != _NULL]
        for key in asked:
            if _number_decoder.decode(fields[key]) > cap:
                fields[key] = capped
        if not asked:
            fields["max_tokens"] = capped
    if mirror_max_tokens:
        fields["max_tokens"] = fields["max_completion_tokens"]  # after the cap, so the ceiling holds for both
    if add_usage:  # the client's other stream options are kept
        options = fields.get("stream_options", _NULL)
        merged = {} if options == _NULL else _fields_decoder.decode(options)
        merged["include_usage"] = _TRUE
        fields["stream_options"] = Raw(_encode(merged))
    if fill_content:
        fields["messages"] = _with_empty_tool_call_content(fields["messages"])
    if strip_store:
        fields.pop("store", None)
        fields.pop("metadata", None)
    return _encode(fields)


def relayed_body(
    body: bytes,
    route: Route,
    caller_cap: int | None,
    cap_field: str | None,
    *,
    with_defaults: bool = False,
    add_usage: bool = False,
) -> bytes:
    """`upstream_body` for the endpoints other than chat: the client's bytes, or with only `model`, the
    ceiling on `cap_field` (the route's and the caller's: the lower wins; None: the endpoint generates no
    text), the route's defaults (`with_defaults`: where its parameters are chat's) and streamed usage."""
    cap = None
    if cap_field is not None:
        cap = route.max_tokens if caller_cap is None else min(caller_cap, route.max_tokens or caller_cap)
    defaults = route.defaults if with_defaults else {}
    if route.upstream_model == route.public_name and not (defaults or cap is not None or add_usage):
        return body
    fields = _fields_decoder.decode(body)
    fields["model"] = Raw(_encode(route.upstream_model))
    for key, value in defaults.items():
        if fields.get(key, _NULL) == _NULL:
            fields[key] = value
    if cap_field is not None and cap is not None:
        asked = fields.get(cap_field, _NULL)
        if asked == _NULL or _number_decoder.decode(asked) > cap:
            fields[cap_field] = Raw(_encode(cap))
    if add_usage:
        options = fields.get("stream_options", _NULL)
        merged = {} if options == _NULL else _fields_decoder.decode(options)
        merged["include_usage"] = _TRUE
        fields["stream_options"] = Raw(_encode(merged))
    return _encode(fields)


def _with_empty_tool_call_content(messages: Raw) -> Raw:
    turns = _turns_decoder.decode(messages)
    for turn in turns:
        if turn.get("content", _NULL) == _NULL and "tool_calls" in turn:
            turn["content"] = Raw(b'""')
    return Raw(_encode(turns))


def rename_model(document: bytes, public_name: str) -> bytes:
    """Set a JSON object's `model` to `public_name`, keeping every other field's bytes; anything else
    (not an object, no `model`) is returned as the very same object."""
    try:
        fields = _fields_decoder.decode(document)
    except (msgspec.DecodeError, RecursionError):
        return document
    if "model" not in fields:
        return document
    fields["model"] = Raw(_encode(public_name))
    return _encode(fields)


def rename_response_model(document: bytes, public_name: str) -> bytes:
    """`rename_model` for the Responses API: a response names its model at the top, its stream events
    inside their `response` object (`response.created`, `response.completed`, ...)."""
    try:
        fields = _fields_decoder.decode(document)
    except (msgspec.DecodeError, RecursionError):
        return document
    if "model" in fields:
        fields["model"] = Raw(_encode(public_name))
        return _encode(fields)
    if "response" not in fields:
        return document
    response = bytes(fields["response"])
    renamed = rename_model(response, public_name)
    if renamed is response:
        return document
    fields["response"] = Raw(renamed)
    return _encode(fields)
