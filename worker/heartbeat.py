"""A worker's presence in Redis: what `visionq workers` lists, refreshed while alive."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import redis
from celery import signals

from tasks.record import utc_now
from tasks.heartbeats import HEARTBEAT_INTERVAL_S, announce, withdraw, worker_key
from worker.device import gpu_memory

log = logging.getLogger("visionq.worker")

LAZY_WRITE_S = 1.0  # how late a lazy update may reach Redis


class Heartbeat:
    """Writes this worker's state every few seconds on a daemon thread."""

    def __init__(self, client: redis.Redis, prefix: str, name: str, info: dict[str, Any]) -> None:
        self.client = client
        self.prefix, self.name = prefix, name
        self.state: dict[str, Any] = {
            "name": name, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": utc_now(), "state": "loading", "jobs_done": 0, **info,
        }
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="visionq-heartbeat", daemon=True)

    def start(self) -> None:
        self._warn_of_a_namesake()
        self.beat()
        self._thread.start()

    def _warn_of_a_namesake(self) -> None:
        """Another live worker by this name: Celery's `-d NAME` reaches both, and `visionq workers`
        shows one entry that flips between them. Said loudly, not refused: the heartbeat of a worker
        just killed (a fleet child restarted under its name, a container restarted) lives on for
        HEARTBEAT_TTL_S, and where pids are namespaced a live pid there may be another process."""
        try:
            raw = self.client.get(worker_key(self.prefix, self.name))
        except redis.RedisError:
            return
        other = json.loads(raw) if raw is not None else None
        if other is None or (other.get("host") == self.state["host"] and not _alive(other.get("pid"))):
            return
        log.warning("another worker is already named %s (pid %s on %s, last seen %s): Celery's -d %s reaches "
                    "both, and `visionq workers` shows one of them; give each worker its own --name",
                    self.name, other.get("pid"), other.get("host"), other.get("updated_at"), self.name)

    def update(self, *, lazy: bool = False, **changes: Any) -> None:
        """Record changes; written at once, or with `lazy` by the next beat (at most a
        second later), so per-job busy/ready flips cost no Redis write on the hot path."""
        self.state.update(changes)
        if not lazy:
            self.beat()
        elif not self._dirty.is_set():
            self._dirty.set()

    def beat(self) -> None:
        self.state["updated_at"] = utc_now()
        self.state["memory_mb"] = _memory_mb()
        try:
            announce(self.client, self.prefix, self.name, json.dumps(self.state))
        except redis.RedisError:
            pass  # Redis is briefly away; the next beat tries again

    def stop(self) -> None:
        self._stop.set()
        try:
            withdraw(self.client, self.prefix, self.name)
        except redis.RedisError:
            pass

    def follow_celery(self, counters: Callable[[], dict[str, int]] | None = None) -> None:
        """ready once Celery consumes, draining on warm shutdown, `counters` (e.g. jobs_done,
        model_loads) read again after each task."""
        def ready(**_: Any) -> None:
            self.update(state="ready")

        def draining(**_: Any) -> None:
            self.update(state="draining")

        in_flight = [0]  # jobs held by task threads (several with micro-batching)
        lock = threading.Lock()

        def task_started(**_: Any) -> None:
            with lock:
                in_flight[0] += 1
                if self.state["state"] != "draining":
                    self.update(state="busy", jobs_in_hand=in_flight[0], lazy=True)

        def task_done(**_: Any) -> None:
            with lock:
                in_flight[0] -= 1
                changes: dict[str, Any] = {"jobs_in_hand": in_flight[0]}
                if self.state["state"] != "draining":
                    changes["state"] = "busy" if in_flight[0] else "ready"
                if counters is not None:
                    changes.update(counters())
                self.update(lazy=True, **changes)

        # weak=False: these closures have no other reference and would be collected.
        signals.worker_ready.connect(ready, weak=False)
        signals.worker_shutting_down.connect(draining, weak=False)
        signals.task_prerun.connect(task_started, weak=False)
        signals.task_postrun.connect(task_done, weak=False)

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(LAZY_WRITE_S):
            if self._dirty.is_set() or time.monotonic() - last >= HEARTBEAT_INTERVAL_S:
                self._dirty.clear()
                self.beat()
                last = time.monotonic()



# Processes of this worker whose memory counts as its own: its model process
# (worker/model_process.py), registered by `count_memory_of`.
_COMPANIONS: list[int] = []


def count_memory_of(pid: int) -> None:
    """Count process `pid`'s resident memory in this worker's (`rss`, and `model_process_rss`)."""
    _COMPANIONS.append(pid)


def _rss_mb(pid: int | str) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: Any) -> bool:
    """Whether process `pid` of this host runs, and is not this one (a container restarted with
    the same pid)."""
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it runs
        return True
    return True


def _memory_mb() -> dict[str, float]:
    """Resident memory of this worker (its model process included, also on its own), and the GPU
    memory torch holds once CUDA is up (in this process or its model process)."""
    memory: dict[str, float] = {}
    own = _rss_mb("self")
    if own is not None:
        memory["rss"] = own
    companions = [rss for rss in map(_rss_mb, _COMPANIONS) if rss is not None]
    if companions:
        memory["model_process_rss"] = round(sum(companions), 1)
        memory["rss"] = round(memory.get("rss", 0.0) + sum(companions), 1)
    for _device, allocated, reserved in gpu_memory()[:1]:  # the worker's GPU (it is pinned to one)
        memory["gpu_allocated"] = round(allocated / 2**20, 1)
        memory["gpu_reserved"] = round(reserved / 2**20, 1)
    return memory
