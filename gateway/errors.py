"""The one error hierarchy: each error knows its HTTP status, OpenAI error ``type``, machine ``code``
and whether the gateway may fail over to another backend. Imports nothing from the project."""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.http_status = status or self.status
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


class InvalidRequestError(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationError(GatewayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    error_type = "permission_error"
    default_code = "model_not_allowed"


class NotFoundError(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class PayloadTooLargeError(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimitError(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The engine answered with a server error (5xx) or garbage: try another backend."""

    status = 502
    error_type = "api_error"
    default_code = "upstream_error"
    retryable = True


class UpstreamUnavailableError(GatewayError):
    """The engine could not be reached, is unhealthy or overloaded: try another backend."""

    status = 503
    error_type = "api_error"
    default_code = "upstream_unavailable"
    retryable = True


class UpstreamTimeoutError(GatewayError):
    """The engine did not produce a first token (or the next chunk) in time: try another backend."""

    status = 504
    error_type = "api_error"
    default_code = "upstream_timeout"
    retryable = True


class UpstreamStreamError(GatewayError):
    """The engine failed after the first event: the request is committed, resume or end the stream."""

    status = 502
    error_type = "api_error"
    default_code = "upstream_stream_error"
    retryable = True


class ServiceUnavailableError(GatewayError):
    """The gateway itself cannot serve (no healthy backend, limiter store down and fail_closed)."""

    status = 503
    error_type = "api_error"
    default_code = "service_unavailable"
