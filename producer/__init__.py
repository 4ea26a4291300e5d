"""The client side of visionq: the Python SDK (`Client`, `Job`) and the `visionq` CLI."""
from producer.client import Client
from producer.job import Job
from tasks.errors import InvalidInput, JobNotFound, VisionqError

__all__ = ["Client", "InvalidInput", "Job", "JobNotFound", "VisionqError"]
