"""What a chat-completion request may hold, as OpenAI's spec (`CreateChatCompletionRequest`) says it.

Views, not models: each Struct holds only the fields the facade reads, or that a model server reads and may
answer with a 500 when malformed, each typed, bounded and nullable exactly as the spec says, so that nothing
the spec allows is refused. Unknown fields are skipped (they still go upstream, untouched). Messages,
content parts, tools, tool calls and response formats are unions told apart by their `role` or `type`, so
a wrong field is named under the right shape ("messages[2].tool_call_id", not just "messages[2]").
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = ["AssistantMessage", "ChatRequest", "Message"]

NonEmpty = Meta(min_length=1)
UnitInterval = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]


class _View(Struct, kw_only=True):
    """A read-only view: unknown fields are skipped, never rejected (they still go upstream)."""


class _Typed(_View, tag_field="type"):
    """One of several shapes, told apart by `type`: an unknown type is refused naming that `type`."""


class _Object(_View):
    """Any JSON object: the spec asks for one here, and nobody reads its fields."""


class Named(_View):
    name: str


class TextPart(_Typed, tag="text"):
    text: str


class TextOnlyPart(_View):
    """A text part where text is the only kind (system, developer and tool content): `type` is a field
    here, not a union's tag, so that it stays required."""

    type: Literal["text"]
    text: str


class ImageUrl(_View):
    url: str
    detail: Literal["auto", "low", "high"] | UnsetType = UNSET


class ImagePart(_Typed, tag="image_url"):
    image_url: ImageUrl


class InputAudio(_View):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Typed, tag="input_audio"):
    input_audio: InputAudio


class FilePart(_Typed, tag="file"):
    file: _Object


class RefusalPart(_Typed, tag="refusal"):
    refusal: str


TextContent = str | Annotated[list[TextOnlyPart], NonEmpty]
UserContent = str | Annotated[list[TextPart | ImagePart | AudioPart | FilePart], NonEmpty]
AssistantContent = str | Annotated[list[TextPart | RefusalPart], NonEmpty]


class FunctionCall(_View):
    name: str
    arguments: str


class CustomCall(_View):
    name: str
    input: str


class FunctionToolCall(_Typed, tag="function"):
    id: str
    function: FunctionCall


class CustomToolCall(_Typed, tag="custom"):
    id: str
    custom: CustomCall


class _Message(_View, tag_field="role"):
    """A message's shape is chosen by its `role`: an unknown role is refused naming `messages[i].role`."""


class SystemMessage(_Message, tag="system"):
    content: TextContent
    name: str | UnsetType = UNSET


class DeveloperMessage(SystemMessage, tag="developer"):
    """The newer name of a system message."""


class UserMessage(_Message, tag="user"):
    content: UserContent
    name: str | UnsetType = UNSET


class AssistantMessage(_Message, tag="assistant"):
    """`content` may be left out or null when the turn calls a tool (see `wire.require_content`)."""

    content: AssistantContent | None = None
    name: str | UnsetType = UNSET
    tool_calls: list[FunctionToolCall | CustomToolCall] | UnsetType = UNSET
    function_call: FunctionCall | None = None  # the legacy single call, before tool_calls


class ToolMessage(_Message, tag="tool"):
    content: TextContent
    tool_call_id: str


class FunctionMessage(_Message, tag="function"):
    """The legacy tool result: `content` is required but may be null."""

    content: str | None
    name: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


class FunctionTool(_Typed, tag="function"):
    function: Named


class CustomTool(_Typed, tag="custom"):
    custom: Named


class AllowedTools(_View):
    mode: Literal["auto", "required"]
    tools: list[_Object]


class AllowedToolsChoice(_Typed, tag="allowed_tools"):
    allowed_tools: AllowedTools


class FunctionChoice(_Typed, tag="function"):
    function: Named


class CustomChoice(_Typed, tag="custom"):
    custom: Named


ToolChoice = Literal["none", "auto", "required"] | AllowedToolsChoice | FunctionChoice | CustomChoice


class TextFormat(_Typed, tag="text"):
    pass


class JsonObjectFormat(_Typed, tag="json_object"):
    pass


class JsonSchemaFormat(_Typed, tag="json_schema"):
    json_schema: Named


class StreamOptions(_View):
    include_usage: bool | UnsetType = UNSET


class ChatRequest(_View):
    """The request's validated fields. No minimum for `max_tokens`: the spec sets none (a route's cap is
    the place for an upstream's own limit)."""

    model: str
    messages: Annotated[list[Message], NonEmpty]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: UnitInterval | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = None  # the spec's bounds (±9223372036854776000) do not fit msgspec's int64 constraints
    stop: str | Annotated[list[str], Meta(min_length=1, max_length=4)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None  # nullable here; the allOf part it extends disagrees
    logit_bias: dict[str, int] | None = None
    tools: list[FunctionTool | CustomTool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | UnsetType = UNSET
    functions: Annotated[list[Named], Meta(min_length=1, max_length=128)] | UnsetType = UNSET
    function_call: Literal["none", "auto"] | Named | UnsetType = UNSET
    user: str | UnsetType = UNSET
    # Stored chat completions: the facade keeps the completion (see store/), with these metadata.
    store: bool | None = None
    metadata: dict[str, str] | None = None  # the spec's bounds (16 pairs, 64/512 characters) are only prose
