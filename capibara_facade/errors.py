"""What can go wrong, as OpenAI clients understand it.

Every failure the facade reports is one of these. The HTTP status is the contract: the `openai` SDK picks
its exception class from it (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
413/422 → APIStatusError, 429 RateLimitError, 5xx InternalServerError), so each class fixes its status,
`type` and default `code` here, and `envelope()` renders OpenAI's error shape in exactly one place:

    FacadeError                  500 server_error
    ├── InvalidRequest           400 invalid_request_error   param = the offending field
    ├── AuthenticationFailed     401 authentication_error    code = invalid_api_key
    ├── ModelNotFound            404 invalid_request_error   code = model_not_found
    ├── RouteNotFound            404 invalid_request_error   code = not_found
    ├── EndpointNotSupported     404 invalid_request_error   code = endpoint_not_supported
    ├── PermissionDenied         403 invalid_request_error   code = insufficient_permissions
    ├── OriginNotAllowed         403 invalid_request_error   code = origin_not_allowed
    ├── ModelNotAllowed          403 invalid_request_error   code = model_not_allowed
    ├── RateLimited              429 requests / tokens / insufficient_quota (+ Retry-After, x-ratelimit-*)
    ├── LimiterUnavailable       503 server_error            code = limiter_unavailable (+ Retry-After)
    ├── MethodNotAllowed         405 invalid_request_error   code = method_not_allowed (+ Allow)
    ├── PayloadTooLarge          413 invalid_request_error   code = request_too_large
    ├── ShuttingDown             503 server_error            code = server_shutdown (+ Retry-After)
    └── UpstreamError            502 upstream_error          code = upstream_unreachable
        ├── UpstreamUnavailable  503                         code = no_upstream_available
        └── UpstreamTimeout      504                         code = upstream_timeout

An upstream's own 4xx/5xx is not a FacadeError: its status and JSON body are passed through unchanged
(see `forward.py`); only a non-JSON error body is wrapped with `envelope()`.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "AuthenticationFailed",
    "EndpointNotSupported",
    "ErrorBody",
    "ErrorEnvelope",
    "FacadeError",
    "InvalidRequest",
    "LimiterUnavailable",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "ModelNotFound",
    "OriginNotAllowed",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RouteNotFound",
    "ShuttingDown",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "envelope",
]


class ErrorBody(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


_encode = msgspec.json.Encoder().encode


def envelope(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    """OpenAI's error shape: all four keys always present (`param` and `code` may be null)."""
    return _encode(ErrorEnvelope(ErrorBody(message, type, param, code)))


class FacadeError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> bytes:
        return envelope(self.message, self.type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        return {}

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """All headers of the error response, as ASGI wants them."""
        extra = [(name.lower().encode(), value.encode()) for name, value in self.headers().items()]
        return [(b"content-type", b"application/json"), *extra]


class InvalidRequest(FacadeError):
    status = 400
    type = "invalid_request_error"
    code = None


class AuthenticationFailed(FacadeError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="capibara-facade"'}


class ModelNotFound(FacadeError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str, known: list[str]) -> None:
        names = ", ".join(known) or "none"
        super().__init__(f"The model {model!r} does not exist. Available models: {names}.", param="model")


class RouteNotFound(FacadeError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class EndpointNotSupported(FacadeError):
    """The model exists, but none of its model servers serves this endpoint (their `endpoints`)."""

    status = 404
    type = "invalid_request_error"
    code = "endpoint_not_supported"

    def __init__(self, model: str, path: str) -> None:
        super().__init__(f"The model {model!r} is not served on {path}.", param="model")


class PermissionDenied(FacadeError):
    status = 403
    type = "invalid_request_error"
    code = "insufficient_permissions"


class MethodNotAllowed(FacadeError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class OriginNotAllowed(FacadeError):
    status = 403
    type = "invalid_request_error"
    code = "origin_not_allowed"


class ModelNotAllowed(FacadeError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class RateLimited(FacadeError):
    """429: a caller's limit. `type` is the limit's kind as OpenAI names it ("requests", "tokens", or
    "insufficient_quota" for a spent budget); the headers say when to come back and what is left."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, limit: str, type: str, code: str, extra_headers: list[tuple[bytes, bytes]]
    ) -> None:
        super().__init__(message, code=code)
        self.limit = limit  # which: requests, tokens, too_large, concurrent, daily
        self.type = type
        self.extra_headers = extra_headers

    def headers(self) -> dict[str, str]:
        return {name.decode(): value.decode() for name, value in self.extra_headers}


class PayloadTooLarge(FacadeError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ShuttingDown(FacadeError):
    status = 503
    type = "server_error"
    code = "server_shutdown"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class LimiterUnavailable(ShuttingDown):
    """503 while the rate limits cannot be checked (`on_redis_error = "fail_closed"`): like a restart, brief."""

    code = "limiter_unavailable"


class UpstreamError(FacadeError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"

    def __init__(self, message: str, *, code: str | None = None, failure: str = "connect") -> None:
        super().__init__(message, code=code)
        self.failure = failure  # what kind of failure, for the metrics: connect, timeout, broke_off, ...


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "no_upstream_available"

    def __init__(self, message: str, *, retry_after: int = 1, failure: str = "ejected") -> None:
        super().__init__(message, failure=failure)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
