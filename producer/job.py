"""`Job`: a handle on one submitted job, refreshed from the job store."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from tasks.record import JobRecord

if TYPE_CHECKING:
    from producer.client import Client


class Job:
    def __init__(self, client: Client, record: JobRecord) -> None:
        self._client = client
        self._record = record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def kind(self) -> str:
        return self._record.kind.value

    @property
    def status(self) -> str:
        return self._record.status.value

    @property
    def progress(self) -> float:
        return self._record.progress

    @property
    def output(self) -> dict[str, Any] | None:
        return self._record.output

    @property
    def error(self) -> dict[str, str] | None:
        return self._record.error

    @property
    def is_final(self) -> bool:
        return self._record.is_final

    def refresh(self) -> Job:
        self._record = self._client.store.get(self.id)
        return self

    def wait(self, timeout: float | None = None, on_change: Callable[[Job], None] | None = None) -> Job:
        """Block until the job is final and return it (refreshed).

        Woken by the job's events, not a sleep loop. Raises TimeoutError when it is
        not final within `timeout` seconds (None: wait forever). The job itself keeps
        running after a timeout.
        """
        def changed(record: JobRecord) -> None:
            self._record = record
            if on_change is not None:
                on_change(self)

        self._record = self._client.store.wait_for_final(self.id, timeout, on_change=changed)
        return self

    def cancel(self) -> Job:
        return self._client.cancel(self.id)

    def to_dict(self) -> dict[str, Any]:
        return self._record.to_dict()

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.status}>"
