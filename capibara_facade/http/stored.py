"""The stored chat completions' routes, as OpenAI's spec has them, each scoped to the calling key:

    GET    /v1/chat/completions                      list (model, metadata[key]=value, after, limit, order)
    GET    /v1/chat/completions/{id}                 retrieve
    POST   /v1/chat/completions/{id}                 update its metadata
    DELETE /v1/chat/completions/{id}                 delete
    GET    /v1/chat/completions/{id}/messages        its request's messages (after, limit, order)

Another caller's id is a 404, exactly as an id that never existed. Public callers (no key) have no stored
completions: theirs are never stored (everyone behind one address would share them) and these routes answer
them 401. With `[store]` off every route is a 404. `GET /v1/chat/completions` shares its path with the
POST that creates completions, whose handler hands GETs to `list_completions` here.

Each reads the request through an `Exchange`, like the relayed routes, so every answer, errors included,
carries the request id, and each request is accounted (metrics, request log) under the route
`stored_completions`. (The routes with an id are Litestar handlers: its `@asgi` routes lose path parameters.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.handlers import BaseRouteHandler
from litestar.types import Receive, Scope, Send

from ..callers.identity import PUBLIC
from ..errors import AuthenticationFailed, FacadeError, InvalidRequest, RouteNotFound
from ..gateway import Gateway
from ..observe.record import RequestRecord
from ..store import Order, Store, StoredCompletion
from .exchange import ClientDisconnected, Exchange

__all__ = ["list_completions", "stored_routes"]

log = logging.getLogger(__name__)

ROUTE = "stored_completions"
Header = tuple[bytes, bytes]
_JSON: list[Header] = [(b"content-type", b"application/json")]
_MAX_LIMIT = 100
_encode = msgspec.json.Encoder().encode
_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_messages_decoder = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])


class CompletionNotFound(RouteNotFound):
    def __init__(self, completion_id: str) -> None:
        super().__init__(f"No chat completion found with id {completion_id!r}.", param="completion_id")


class StoreUnavailable(FacadeError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class _Update(msgspec.Struct):
    metadata: dict[str, str] | None


_update_decoder = msgspec.json.Decoder(_Update)
# What a handler does once the caller is known: (store, caller name, exchange, query) → the answer's body.
_Answer = Callable[[Store, str, Exchange, dict[str, str]], Awaitable[bytes]]


async def _answered(gateway: Gateway, exchange: Exchange, answer: _Answer) -> tuple[int, list[Header], bytes]:
    """The answer's status, headers and body (an error in OpenAI's envelope), the request accounted."""
    record = RequestRecord(ROUTE, exchange.request_id)
    generation = gateway.current
    status, headers, body = 200, list(_JSON), b""
    try:
        generation.admit_origin(exchange.origin)
        caller = generation.callers.identify(
            exchange.authorization, exchange.peer, exchange.forwarded_for, exchange.real_ip
        )
        record.caller = caller.name
        store = gateway.store
        if store is None:
            raise RouteNotFound("Stored chat completions are not enabled on this server.")
        if caller.name == PUBLIC:
            raise AuthenticationFailed(
                "Stored chat completions belong to an API key: send 'Authorization: Bearer <key>'."
            )
        try:
            body = await answer(store, caller.name, exchange, _query(exchange.scope))
        except (FacadeError, ClientDisconnected):
            raise
        except Exception:  # the database's failure, whatever its driver raises
            log.exception("the completion store failed (request %s)", exchange.request_id)
            raise StoreUnavailable("The stored completions cannot be reached; retry the request.") from None
    except FacadeError as error:
        record.refused(error)
        status, headers, body = error.status, error.response_headers(), error.body()
    except ClientDisconnected:
        record.client_left(streaming=False)
        status = 499  # nobody to answer; what the request log says
    finally:
        record.finish(status, len(body))
        await gateway.account(record)
    return status, headers, body


def list_completions(gateway: Gateway) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """`GET /v1/chat/completions` (the handler of that path's POST hands it its GETs)."""

    async def answer(store: Store, caller: str, exchange: Exchange, query: dict[str, str]) -> bytes:
        metadata = {key[9:-1]: value for key, value in query.items() if key.startswith("metadata[") and key[-1] == "]"}
        page = await store.list(caller, query.get("model"), metadata, query.get("after"), _limit(query), _order(query))
        documents = [_document(completion) for completion in page.items]
        return _list_body(documents, [completion.id for completion in page.items], page.has_more)

    async def list_route(scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(scope, receive, send)
        status, headers, body = await _answered(gateway, exchange, answer)
        if status != 499:
            await exchange.respond(status, headers, body)

    return list_route


def stored_routes(gateway: Gateway) -> list[BaseRouteHandler]:
    async def respond(request: Request[Any, Any, Any], answer: _Answer) -> Response[bytes]:
        exchange = Exchange(request.scope, request.receive, request.send)
        status, headers, body = await _answered(gateway, exchange, answer)
        named = {name.decode(): value.decode() for name, value in headers}
        return Response(body, status_code=status, headers={**named, "x-request-id": exchange.request_id})

    @get("/v1/chat/completions/{completion_id:str}")
    async def retrieve_completion(request: Request[Any, Any, Any], completion_id: str) -> Response[bytes]:
        async def answer(store: Store, caller: str, exchange: Exchange, query: dict[str, str]) -> bytes:
            return _document(_found(await store.get(caller, completion_id), completion_id))

        return await respond(request, answer)

    @post("/v1/chat/completions/{completion_id:str}", status_code=200)
    async def update_completion(request: Request[Any, Any, Any], completion_id: str) -> Response[bytes]:
        async def answer(store: Store, caller: str, exchange: Exchange, query: dict[str, str]) -> bytes:
            metadata = _metadata(await exchange.read_body(gateway.config.server.max_body_bytes))
            return _document(_found(await store.update_metadata(caller, completion_id, metadata), completion_id))

        return await respond(request, answer)

    @delete("/v1/chat/completions/{completion_id:str}", status_code=200)
    async def delete_completion(request: Request[Any, Any, Any], completion_id: str) -> Response[bytes]:
        async def answer(store: Store, caller: str, exchange: Exchange, query: dict[str, str]) -> bytes:
            if not await store.delete(caller, completion_id):
                raise CompletionNotFound(completion_id)
            return _encode({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})

        return await respond(request, answer)

    @get("/v1/chat/completions/{completion_id:str}/messages")
    async def list_messages(request: Request[Any, Any, Any], completion_id: str) -> Response[bytes]:
        async def answer(store: Store, caller: str, exchange: Exchange, query: dict[str, str]) -> bytes:
            stored = await store.list_messages(caller, completion_id)
            if stored is None:
                raise CompletionNotFound(completion_id)
            return _messages_page(_messages_decoder.decode(stored), query)

        return await respond(request, answer)

    return [retrieve_completion, update_completion, delete_completion, list_messages]


def _found(completion: StoredCompletion | None, completion_id: str) -> StoredCompletion:
    if completion is None:
        raise CompletionNotFound(completion_id)
    return completion


def _metadata(body: bytes) -> dict[str, str]:
    """The metadata of an update's body (`{"metadata": {...}}`; null clears them)."""
    try:
        return _update_decoder.decode(body).metadata or {}
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}", param="metadata") from None
    except msgspec.DecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None


def _messages_page(messages: list[dict[str, msgspec.Raw]], query: dict[str, str]) -> bytes:
    if _order(query) == "desc":
        messages.reverse()
    ids = [msgspec.json.decode(message["id"], type=str) for message in messages]
    after = query.get("after")
    start = ids.index(after) + 1 if after in ids else 0
    end = start + _limit(query)
    return _list_body(messages[start:end], ids[start:end], end < len(messages))


def _query(scope: Any) -> dict[str, str]:
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=False))


def _limit(query: dict[str, str]) -> int:
    """`limit`, default 20; the spec sets no maximum, so a larger one gets pages of `_MAX_LIMIT`."""
    given = query.get("limit", "20")
    if not given.isdigit() or int(given) < 1:
        raise InvalidRequest(f"limit must be a positive integer (got {given!r}).", param="limit")
    return min(int(given), _MAX_LIMIT)


def _order(query: dict[str, str]) -> Order:
    given = query.get("order", "asc")
    if given == "asc":
        return "asc"
    if given == "desc":
        return "desc"
    raise InvalidRequest(f"order must be 'asc' or 'desc' (got {given!r}).", param="order")


def _document(completion: StoredCompletion) -> bytes:
    """The stored ChatCompletion as OpenAI serves it: with its metadata."""
    fields = _fields_decoder.decode(completion.completion)
    fields["metadata"] = msgspec.Raw(_encode(completion.metadata))
    return _encode(fields)


def _list_body(documents: list[Any], ids: list[str], has_more: bool) -> bytes:
    """OpenAI's list shape; `first_id` and `last_id` are strings even for an empty page (the spec requires them)."""
    items = [msgspec.Raw(document) if isinstance(document, bytes) else document for document in documents]
    first, last = (ids[0], ids[-1]) if ids else ("", "")
    return _encode({"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": has_more})
