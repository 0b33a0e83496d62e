"""The few OpenAI shapes the facade reads or writes; every other byte passes through untouched.

`read_chat()` validates a chat-completion request against the fields we (or the upstream) rely on, and
turns a client's mistake into a 400 that names the field, before it can reach a model server that would
answer it with a 500. The body itself is never rebuilt from these views: `upstream_body()` re-encodes only
when a route demands it, and then as `dict[str, msgspec.Raw]`, so every field but the ones we set keeps
its exact bytes (vendor fields, escapes and number formatting included).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from .catalog import Route
from .errors import InvalidRequest

__all__ = [
    "ChatRequest",
    "Message",
    "ModelCard",
    "ModelList",
    "hides_usage",
    "invalid",
    "invalid_json",
    "read_chat",
    "rename_model",
    "upstream_body",
]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
UnitInterval = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]


class _View(Struct, kw_only=True):
    """A read-only view: unknown fields are skipped, never rejected (they still go upstream)."""


class ContentPart(_View):
    type: str


class FunctionName(_View):
    name: str


class ToolCall(_View):
    function: FunctionName
    id: str | None = None
    type: str = "function"


class Message(_View):
    role: Role
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Tool(_View):
    type: str
    function: FunctionName | None = None


class ToolChoice(_View):
    type: str
    function: FunctionName | None = None


class ResponseFormat(_View):
    type: str


class StreamOptions(_View):
    include_usage: bool | None = None


class ChatRequest(_View):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: UnitInterval | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None


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
_number_decoder = msgspec.json.Decoder(float)
_TRUE = Raw(b"true")
_NULL = Raw(b"null")


def read_chat(body: bytes) -> ChatRequest:
    """Validate a chat-completion request body; 400 naming the field when it is not one."""
    try:
        chat = _chat_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None
    except msgspec.DecodeError:
        raise invalid_json() from None
    for index, message in enumerate(chat.messages):
        if message.content is None and message.role != "assistant":
            raise InvalidRequest(
                f"messages[{index}].content: a {message.role} message needs content.",
                param=f"messages[{index}].content",
            )
        if message.content is None and message.role == "assistant" and not message.tool_calls:
            raise InvalidRequest(
                f"messages[{index}].content: an assistant message needs content or tool_calls.",
                param=f"messages[{index}].content",
            )
    for index, tool in enumerate(chat.tools or ()):
        if tool.type == "function" and tool.function is None:
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{index}].function'.",
                param=f"tools[{index}].function",
                code="missing_required_parameter",
            )
    return chat


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


def hides_usage(chat: ChatRequest, route: Route) -> bool:
    """Whether the facade asks the upstream for a stream's usage chunk that the client did not ask for (and so
    must keep from the client: OpenAI sends it only to clients that set `stream_options.include_usage`)."""
    asked = chat.stream_options is not None and chat.stream_options.include_usage is True
    return bool(route.stream_usage and chat.stream and not asked)


def upstream_body(body: bytes, chat: ChatRequest, route: Route) -> bytes:
    """The body to send upstream: the client's own bytes, or with only the fields a route demands changed:
    `model`, declared defaults and caps, streamed usage, and the upstream's compatibility fixes."""
    add_usage = hides_usage(chat, route)
    compat = route.compat
    mirror_max_tokens = (
        compat.max_tokens_from_max_completion_tokens
        and chat.max_completion_tokens is not None
        and chat.max_tokens is None
    )
    fill_content = compat.empty_content_for_tool_calls and any(
        message.content is None and message.tool_calls for message in chat.messages
    )
    if not (route.rewrites_request or add_usage or mirror_max_tokens or fill_content):
        return body
    fields = _fields_decoder.decode(body)
    fields["model"] = Raw(_encode(route.upstream_model))
    for key, value in route.defaults.items():
        if fields.get(key, _NULL) == _NULL:
            fields[key] = value
    if route.max_tokens is not None:
        # On the final fields, so that neither the client nor a default gets past the ceiling.
        cap = Raw(_encode(route.max_tokens))
        asked = [key for key in ("max_tokens", "max_completion_tokens") if fields.get(key, _NULL) != _NULL]
        for key in asked:
            if _number_decoder.decode(fields[key]) > route.max_tokens:
                fields[key] = cap
        if not asked:
            fields["max_tokens"] = cap
    if mirror_max_tokens:
        fields["max_tokens"] = fields["max_completion_tokens"]  # after the cap, so the ceiling holds for both
    if add_usage:  # the client's other stream options are kept
        options = fields.get("stream_options", _NULL)
        merged = {} if options == _NULL else _fields_decoder.decode(options)
        merged["include_usage"] = _TRUE
        fields["stream_options"] = Raw(_encode(merged))
    if fill_content:
        fields["messages"] = _with_empty_tool_call_content(fields["messages"])
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
    except msgspec.DecodeError:
        return document
    if "model" not in fields:
        return document
    fields["model"] = Raw(_encode(public_name))
    return _encode(fields)
