"""How many tokens a request may use, before it is sent: what the token limits reserve up front.

The prompt is estimated from its text (about four characters a token for the languages served here, plus a
few tokens of framing per message; an image, audio or file part as a flat 800); the answer is bounded by
the request's max_tokens / max_completion_tokens, or the caps. The reservation is settled to the real usage
when the request is over, so the estimate only needs to be the right size, not right.
"""

from __future__ import annotations

from ..chat_request import ChatRequest

__all__ = ["completion_bound", "estimate_prompt_tokens"]

_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_MEDIA_PART = 800


def estimate_prompt_tokens(chat: ChatRequest) -> int:
    chars = 0
    media = 0
    for message in chat.messages:
        content = getattr(message, "content", None)
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                text = getattr(part, "text", None)
                if isinstance(text, str):
                    chars += len(text)
                else:
                    media += 1
    return chars // _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE * len(chat.messages) + _TOKENS_PER_MEDIA_PART * media


def completion_bound(asked: tuple[int | None, ...], caps: tuple[int | None, ...], default: int) -> int:
    """The most the answer can use: the request's own bounds (`asked`: chat's max_completion_tokens and
    max_tokens, a completion's max_tokens, a response's max_output_tokens) and every cap, the lowest;
    `default` if none."""
    bounds = [bound for bound in (*asked, *caps) if bound is not None]
    return max(min(bounds), 0) if bounds else default
