"""Error codes and the exception types that carry them.

Every failure a job can end with is one of these types; the worker maps it to the
job record's ``error = {"code", "message"}`` in one place.
"""
from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    INVALID_INPUT = "invalid_input"  # the request or its image is bad; never retried
    MODEL_ERROR = "model_error"  # the model raised while running this job
    OUT_OF_MEMORY = "out_of_memory"  # the job does not fit on the device
    TIMEOUT = "timeout"  # the job ran past its time limit
    STORAGE_ERROR = "storage_error"  # reading the input or writing outputs failed after retries
    CANCELED = "canceled"  # canceled by a client
    INTERNAL = "internal"  # a bug or an infrastructure failure of ours


class VisionqError(Exception):
    """Base of every error with a code. `retryable` says whether trying again may help."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

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
    retryable = True


class JobCanceled(VisionqError):
    code = ErrorCode.CANCELED


class JobNotFound(VisionqError, KeyError):
    """No record for this id (never submitted, or past its TTL)."""

    code = ErrorCode.INVALID_INPUT

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class InternalError(VisionqError):
    code = ErrorCode.INTERNAL
