"""The errors of the HTTP gateway: one body everywhere, `{"error": {"code", "message"}}`.

The gateway raises these and answers with the status their code maps to; the SDK's
HTTP mode reads the body back into the same types, so a caller catches the same
`InvalidInput` or `JobNotFound` whichever way its jobs travel. Torch- and
FastAPI-free: both sides import it.
"""
from __future__ import annotations

from typing import Any

from tasks.errors import ErrorCode, InternalError, InvalidInput, JobNotFound, StorageError, VisionqError

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.STORAGE_ERROR: 503,
    ErrorCode.UNAVAILABLE: 503,
}


class GatewayError(VisionqError):
    """An answer of the gateway that is not a job's own error."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # sent as Retry-After with 429 and 503


class Unauthorized(GatewayError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(GatewayError):
    code = ErrorCode.FORBIDDEN


class NotFound(GatewayError):
    """A route or file that does not exist (an unknown job is `JobNotFound`, answered the same way)."""

    code = ErrorCode.NOT_FOUND


class Conflict(GatewayError):
    code = ErrorCode.CONFLICT


class PayloadTooLarge(GatewayError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(GatewayError):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class RateLimited(GatewayError):
    code = ErrorCode.RATE_LIMITED


class Unavailable(GatewayError):
    code = ErrorCode.UNAVAILABLE


def http_status(exc: VisionqError) -> int:
    return HTTP_STATUS.get(exc.code, 500)


def error_body(exc: VisionqError) -> dict[str, Any]:
    return {"error": {"code": exc.code.value, "message": exc.message}}


_BY_CODE: dict[str, type[VisionqError]] = {
    ErrorCode.INVALID_INPUT.value: InvalidInput,
    ErrorCode.NOT_FOUND.value: JobNotFound,
    ErrorCode.STORAGE_ERROR.value: StorageError,
    **{cls.code.value: cls for cls in (Unauthorized, Forbidden, Conflict, PayloadTooLarge,
                                       UnsupportedMediaType, RateLimited, Unavailable)},
}


def error_from_response(status: int, body: Any, retry_after: str | None = None) -> VisionqError:
    """The exception an error answer of the gateway stands for (the SDK's HTTP mode)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return InternalError(f"the gateway answered {status} without an error body: {str(body)[:300]}")
    message = str(error.get("message", ""))
    cls = _BY_CODE.get(error["code"], InternalError)
    if issubclass(cls, GatewayError):
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else None
        return cls(message, retry_after_s=seconds)
    return cls(message)
