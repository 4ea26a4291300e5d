"""Error codes and the exception types that carry them.

Every failure a job can end with is one of these types; the worker maps it to the
job record's ``error = {"code", "message"}`` in one place.
"""
from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_INPUT = "invalid_input"  # the request or its image is bad; never retried
    MODEL_ERROR = "model_error"  # the model raised while running this job
    OUT_OF_MEMORY = "out_of_memory"  # the job does not fit on the device
    TIMEOUT = "timeout"  # the job ran past its time limit
    STORAGE_ERROR = "storage_error"  # storage refused, or stayed unreachable for VISIONQ_STORAGE_RETRY_S
    CANCELED = "canceled"  # canceled by a client
    # Its worker was lost (killed, crashed, restarted) on every one of VISIONQ_MAX_ATTEMPTS
    # runs: the job itself is the likely cause, so it is not delivered again.
    WORKER_LOST = "worker_lost"
    # No worker started it within its queue timeout (queue_timeout_s, VISIONQ_QUEUE_TIMEOUT_<KIND>_S).
    EXPIRED = "expired"
    INTERNAL = "internal"  # a bug or an infrastructure failure of ours
    # The HTTP gateway's answers (producer/gateway), shared with the SDK's HTTP mode.
    UNAUTHORIZED = "unauthorized"  # no API key, or one that is unknown or revoked (401)
    FORBIDDEN = "forbidden"  # a key that may not do this, or a bad or expired file signature (403)
    NOT_FOUND = "not_found"  # no such job or route for this tenant (404)
    CONFLICT = "conflict"  # an Idempotency-Key reused with another body (409)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # a request body over the gateway's cap (413)
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # neither JSON nor multipart/form-data (415)
    RATE_LIMITED = "rate_limited"  # over the key's rate or the tenant's queued jobs; see Retry-After (429)
    UNAVAILABLE = "unavailable"  # Redis or storage unreachable (503)


class VisionqError(Exception):
    """Base of every error with a code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class InvalidInput(VisionqError, ValueError):
    """A bad parameter or image. A ValueError too, so callers can catch either."""

    code = ErrorCode.INVALID_INPUT


class ModelError(VisionqError):
    code = ErrorCode.MODEL_ERROR


class OutOfMemory(VisionqError):
    code = ErrorCode.OUT_OF_MEMORY


class JobTimeout(VisionqError):
    code = ErrorCode.TIMEOUT


class StorageError(VisionqError):
    code = ErrorCode.STORAGE_ERROR


class JobCanceled(VisionqError):
    code = ErrorCode.CANCELED


class JobNotFound(VisionqError, KeyError):
    """No record for this id (never submitted, or past its TTL)."""

    code = ErrorCode.NOT_FOUND  # as the gateway answers it (404): one code whichever way a client asks

    @classmethod
    def for_id(cls, job_id: str) -> JobNotFound:
        """The one message for a job id without a record, or with another tenant's: the gateway's
        answer for the two must not differ by a byte, or it would tell the ids apart."""
        return cls(f"no job {job_id!r} (never submitted, or older than its TTL)")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class WorkerLost(VisionqError):
    code = ErrorCode.WORKER_LOST


class JobExpired(VisionqError):
    code = ErrorCode.EXPIRED


class InternalError(VisionqError):
    code = ErrorCode.INTERNAL
