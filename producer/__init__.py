"""The client side of visionq: the Python SDK (`Client`, `Job`) and the `visionq` CLI."""
import importlib.util as _importlib_util


def _refuse_a_shadowed_contract() -> None:
    # `tasks` is our contract package, but every Celery tutorial has a `tasks.py`: next to
    # the script being run (or in the working folder with `python -m`), it is found first
    # and the import below would fail with "'tasks' is not a package". Say what and how.
    spec = _importlib_util.find_spec("tasks")
    if spec is not None and spec.submodule_search_locations is None:
        raise ImportError(
            f"{spec.origin} shadows visionq's `tasks` package (a module named tasks.py is found first on "
            "sys.path). Rename that file, or run from another folder; for `python -m`, use `python -P -m ...` "
            "(Python 3.11+: the working folder is then not searched).",
            name="tasks", path=spec.origin,
        )


_refuse_a_shadowed_contract()

from producer.client import Client  # noqa: E402 - after the check above
from producer.http_errors import Conflict, Unavailable  # noqa: E402
from producer.job import Job  # noqa: E402
from tasks.errors import InvalidInput, JobNotFound, StorageError, VisionqError  # noqa: E402

__all__ = ["Client", "Conflict", "InvalidInput", "Job", "JobNotFound", "StorageError", "Unavailable", "VisionqError"]
