"""The visionq contract both sides import: kinds, schemas, records, statuses, errors, settings.

Never imports torch (a test pins this).
"""
from tasks.errors import ErrorCode, InvalidInput, JobNotFound, VisionqError
from tasks.kinds import JobKind
from tasks.settings import Settings
from tasks.status import JobStatus

__all__ = ["ErrorCode", "InvalidInput", "JobKind", "JobNotFound", "JobStatus", "Settings", "VisionqError"]
