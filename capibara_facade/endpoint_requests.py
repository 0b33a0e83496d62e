"""What a completions, embeddings or responses request holds, as far as the facade reads it.

Lighter views than the chat request's (`chat_request.py`): the facade forwards these bodies as they are and
reads only what routing and the limits need — the model, whether to stream, the token bounds, what the
prompt is made of (to estimate it), the `user` (affinity) and, for the Responses API, the response it
continues. Each field is typed exactly as OpenAI's spec types it (`CreateCompletionRequest`,
`CreateEmbeddingRequest`, `CreateResponse`), or more loosely where msgspec cannot say it (a union holds one
array type: a prompt array may mix strings and token ids), so nothing the spec allows is refused. Every
other field is skipped here and reaches the upstream byte for byte.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from msgspec import UNSET, Meta, Raw, Struct, UnsetType

__all__ = [
    "CompletionRequest",
    "EmbeddingRequest",
    "ResponseRequest",
    "estimate_completion_prompt",
    "estimate_embedding_input",
    "estimate_response_input",
]

_CHARS_PER_TOKEN = 4  # as callers/tokens.py: the estimate only needs to be the right size

# A string, or an array of strings, of token ids, or of token-id arrays (the spec's four shapes, merged).
_Texts = list[str | int | list[int]]
Prompt = str | _Texts


class _View(Struct, kw_only=True):
    """A read-only view: unknown fields are skipped, never rejected (they still go upstream)."""


class StreamOptions(_View):
    include_usage: bool | UnsetType = UNSET


class CompletionRequest(_View):
    """`POST /v1/completions`. `prompt` is required, and may be null."""

    model: str
    prompt: Prompt | None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    best_of: Annotated[int, Meta(ge=0, le=20)] | None = None
    user: str | UnsetType = UNSET


class EmbeddingRequest(_View):
    """`POST /v1/embeddings`: never a stream."""

    model: str
    input: str | Annotated[_Texts, Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | UnsetType = UNSET
    dimensions: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    user: str | UnsetType = UNSET
    stream: ClassVar[bool | None] = None


class ResponseRequest(_View):
    """`POST /v1/responses`. The spec leaves `model` optional (OpenAI can take it from a stored prompt); the
    facade needs it to know where the request goes."""

    model: str
    input: str | list[Raw] | UnsetType = UNSET  # items of many kinds: only their size is used
    instructions: str | None = None
    stream: bool | None = None
    max_output_tokens: Annotated[int, Meta(ge=16)] | None = None
    previous_response_id: str | None = None
    user: str | UnsetType = UNSET


def _texts_tokens(texts: Prompt | None) -> int:
    if texts is None:
        return 0
    if isinstance(texts, str):
        return len(texts) // _CHARS_PER_TOKEN
    tokens = 0
    for item in texts:
        if isinstance(item, str):
            tokens += len(item) // _CHARS_PER_TOKEN
        elif isinstance(item, int):
            tokens += 1
        else:
            tokens += len(item)
    return tokens


def estimate_completion_prompt(request: CompletionRequest) -> int:
    return _texts_tokens(request.prompt)


def estimate_embedding_input(request: EmbeddingRequest) -> int:
    return _texts_tokens(request.input)


def estimate_response_input(request: ResponseRequest) -> int:
    """Text and the JSON around input items alike, by size: a few tokens' error per item at most."""
    items = request.input
    size = 0 if isinstance(items, UnsetType) else len(items) if isinstance(items, str) else sum(map(len, items))
    return (size + len(request.instructions or "")) // _CHARS_PER_TOKEN
