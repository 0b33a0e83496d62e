"""The OpenAI endpoints the facade relays, each a declaration that the one request path (`http/chat.py`) reads.

Every endpoint goes the same way — receive → authenticate → validate → resolve → limit → pick target →
forward or relay → account — and differs only in what is declared here: its path, the light view its body
is validated into, how its prompt is estimated and its answer bounded (the limits' reservation), which
fields of the body the facade may change, where its usage is, and how it streams (chat and completions:
`data:` chunks ending with `[DONE]`; the Responses API: typed events). An upstream serves an endpoint when
its `endpoints` name it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import msgspec
from msgspec import UnsetType

from . import wire
from .callers.tokens import estimate_prompt_tokens
from .catalog import Route
from .chat_request import ChatRequest
from .endpoint_requests import (
    CompletionRequest,
    EmbeddingRequest,
    ResponseRequest,
    estimate_completion_prompt,
    estimate_embedding_input,
    estimate_response_input,
)
from .observe.usage import Usage, read_response_usage, read_usage

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "Endpoint", "RequestView", "read_response_id"]


class RequestView(Protocol):
    """What the request path reads of every endpoint's view."""

    @property
    def model(self) -> str: ...

    @property
    def stream(self) -> bool | None: ...

    @property
    def user(self) -> str | UnsetType: ...


V = TypeVar("V", bound=RequestView)


class Endpoint(Generic[V]):
    __slots__ = (
        "choices",
        "continued_response",
        "estimate_prompt",
        "hides_usage",
        "name",
        "output_bounds",
        "path",
        "read",
        "read_usage",
        "remembers_responses",
        "typed_events",
        "upstream_body",
    )

    def __init__(
        self,
        name: str,
        path: str,
        read: Callable[[bytes, int], V],
        estimate_prompt: Callable[[V], int],
        output_bounds: Callable[[V], tuple[int | None, ...]] | None,
        upstream_body: Callable[[bytes, V, Route, int | None], bytes],
        *,
        hides_usage: Callable[[V, Route], bool] = lambda view, route: False,
        read_usage: Callable[[bytes], Usage | None] = read_usage,
        typed_events: bool = False,
        remembers_responses: bool = False,
        continued_response: Callable[[V], str | None] = lambda view: None,
        choices: Callable[[V], int] = lambda view: 1,
    ) -> None:
        self.name = name  # the route's name in metrics and the request log; an upstream's `endpoints` entry
        self.path = path  # on the facade and on the upstream
        self.read = read  # (body, max_json_depth) → the validated view; 400 naming the field
        self.estimate_prompt = estimate_prompt
        self.output_bounds = output_bounds  # the request's own bounds on its answer; None: it generates no text
        self.upstream_body = upstream_body  # (body, view, route, caller's max_tokens) → what the upstream gets
        self.hides_usage = hides_usage  # the facade asked for a stream's usage chunk the client did not
        self.read_usage = read_usage  # of a whole answer
        self.typed_events = typed_events  # streams `event: <type>` + data, no [DONE] (the Responses API)
        self.remembers_responses = remembers_responses  # which upstream created each response (its id)
        self.continued_response = continued_response  # the response id this request continues, if any
        self.choices = choices  # answers generated at once (`n`, `best_of`): each up to the output bound


def _chat_bounds(chat: ChatRequest) -> tuple[int | None, ...]:
    return (chat.max_completion_tokens, chat.max_tokens)


CHAT: Endpoint[ChatRequest] = Endpoint(
    "chat",
    "/v1/chat/completions",
    wire.read_chat,
    estimate_prompt_tokens,
    _chat_bounds,
    wire.upstream_body,
    hides_usage=wire.hides_usage,
    choices=lambda chat: chat.n or 1,
)

_completion_decoder = msgspec.json.Decoder(CompletionRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
_response_decoder = msgspec.json.Decoder(ResponseRequest)


def _read_completion(body: bytes, max_depth: int) -> CompletionRequest:
    return wire.read_view(_completion_decoder, body, max_depth)


def _completion_body(body: bytes, request: CompletionRequest, route: Route, caller_cap: int | None) -> bytes:
    # Sampling parameters are named as chat's, so a route's defaults apply; streamed usage works the same.
    add_usage = wire.hides_usage(request, route)
    return wire.relayed_body(body, route, caller_cap, "max_tokens", with_defaults=True, add_usage=add_usage)


COMPLETIONS: Endpoint[CompletionRequest] = Endpoint(
    "completions",
    "/v1/completions",
    _read_completion,
    estimate_completion_prompt,
    lambda request: (request.max_tokens,),
    _completion_body,
    hides_usage=wire.hides_usage,
    choices=lambda request: max(request.n or 1, request.best_of or 1),
)


def _read_embedding(body: bytes, max_depth: int) -> EmbeddingRequest:
    return wire.read_view(_embedding_decoder, body, max_depth)


EMBEDDINGS: Endpoint[EmbeddingRequest] = Endpoint(
    "embeddings",
    "/v1/embeddings",
    _read_embedding,
    estimate_embedding_input,
    None,
    lambda body, request, route, caller_cap: wire.relayed_body(body, route, caller_cap, None),
)


def _read_response(body: bytes, max_depth: int) -> ResponseRequest:
    return wire.read_view(_response_decoder, body, max_depth)


def _response_body(body: bytes, request: ResponseRequest, route: Route, caller_cap: int | None) -> bytes:
    # No defaults (the Responses API names its parameters otherwise) and no stream options: its usage is in
    # `response.completed`, which every stream sends.
    return wire.relayed_body(body, route, caller_cap, "max_output_tokens")


RESPONSES: Endpoint[ResponseRequest] = Endpoint(
    "responses",
    "/v1/responses",
    _read_response,
    estimate_response_input,
    lambda request: (request.max_output_tokens,),
    _response_body,
    read_usage=read_response_usage,
    typed_events=True,
    remembers_responses=True,
    continued_response=lambda request: request.previous_response_id,
)


class _Identified(msgspec.Struct):
    id: str | None = None


_id_decoder = msgspec.json.Decoder(_Identified)


def read_response_id(document: bytes) -> str | None:
    """The `id` of a response (or of the `response` of a stream event)."""
    try:
        return _id_decoder.decode(document).id
    except (msgspec.DecodeError, RecursionError):
        return None
