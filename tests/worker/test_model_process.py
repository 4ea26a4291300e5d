"""The model process's side of the pipe (worker/model_process.py `_ModelServer`), driven here
through a real Pipe with fake pipelines: what a batch answers when it ends, is halted (running
or still waiting), is told to exit midway, fails, runs out of memory or returns what cannot be
pickled; batches sent while one runs run next, in order."""
from __future__ import annotations

import threading
import time
from multiprocessing import Pipe
from typing import Any, Iterator

import pytest

from tasks.errors import ModelError, OutOfMemory
from worker.model_process import _get, _ModelServer, _put


class Stepper:
    """A pipeline whose batch reports `steps` checkpoints, `pause_s` apart, then echoes its inputs."""

    def __init__(self, steps: int = 1, pause_s: float = 0.0) -> None:
        self.steps, self.pause_s = steps, pause_s
        self.finished = threading.Event()

    def batch_key(self, request: Any) -> None:
        return None

    def infer_batch(self, requests: list[Any], inputs: list[Any], progress: Any) -> list[Any]:
        for step in range(self.steps):
            time.sleep(self.pause_s)
            progress((step + 1) / (self.steps + 1))
        if requests[0] == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if requests[0] == "broken":
            raise ValueError("the model broke")
        self.finished.set()
        if requests[0] == "unpicklable":
            return [lambda: None]
        return [("echo", value) for value in inputs]


@pytest.fixture
def served() -> Iterator[tuple[Any, Stepper, threading.Thread]]:
    worker_end, model_end = Pipe()
    pipeline = Stepper(steps=20, pause_s=0.02)
    server = threading.Thread(target=_ModelServer(model_end, {"m": pipeline}).serve, daemon=True)
    server.start()
    yield worker_end, pipeline, server
    try:
        _put(worker_end, ("exit",))
    except OSError:
        pass
    server.join(5)


def answer(conn: Any) -> tuple[Any, ...]:
    """The batch's last message, its start and progress skipped."""
    while True:
        message = _get(conn)
        if message[0] not in ("started", "progress"):
            return message


def running(conn: Any, batch_id: int) -> None:
    """Wait until batch `batch_id` has started and reported progress once."""
    assert _get(conn) == ("started", batch_id)
    assert _get(conn)[:2] == ("progress", batch_id)


def test_a_batch_answers_its_outputs_after_its_progress(served: tuple[Any, Stepper, threading.Thread]) -> None:
    conn, _pipeline, _server = served
    _put(conn, ("run", 1, "m", ["a", "b"], [1, 2]))
    assert _get(conn) == ("started", 1)  # the worker marks the batch's jobs running now
    first = _get(conn)
    assert first[:2] == ("progress", 1) and 0 < first[2] < 1
    assert answer(conn) == ("done", 1, [("echo", 1), ("echo", 2)])


def test_batches_sent_while_one_runs_run_next_in_the_order_they_came(
    served: tuple[Any, Stepper, threading.Thread],
) -> None:
    conn, _pipeline, _server = served
    _put(conn, ("run", 1, "m", ["a"], [1]))
    running(conn, 1)  # the next two wait in the pipe
    _put(conn, ("run", 2, "m", ["b"], [2]))
    _put(conn, ("run", 3, "m", ["c"], [3]))
    assert [answer(conn) for _ in range(3)] == [
        ("done", 1, [("echo", 1)]), ("done", 2, [("echo", 2)]), ("done", 3, [("echo", 3)]),
    ]


def test_halt_stops_the_batch_at_its_next_checkpoint_and_the_next_batch_runs(
    served: tuple[Any, Stepper, threading.Thread],
) -> None:
    conn, pipeline, _server = served
    _put(conn, ("run", 1, "m", ["a"], [1]))
    running(conn, 1)
    _put(conn, ("halt", 1))
    assert answer(conn) == ("stopped", 1)
    assert not pipeline.finished.is_set()
    _put(conn, ("run", 2, "m", ["b"], [2]))
    assert answer(conn) == ("done", 2, [("echo", 2)])


def test_a_waiting_batch_halted_never_runs_and_the_running_one_is_untouched(
    served: tuple[Any, Stepper, threading.Thread],
) -> None:
    conn, pipeline, _server = served
    _put(conn, ("run", 1, "m", ["a"], [1]))
    running(conn, 1)
    _put(conn, ("run", 2, "m", ["b"], [2]))
    _put(conn, ("halt", 2))
    _put(conn, ("halt", 7))  # late: no such batch any more
    assert answer(conn) == ("done", 1, [("echo", 1)])
    assert answer(conn) == ("stopped", 2)
    _put(conn, ("run", 3, "m", ["c"], [3]))
    assert answer(conn) == ("done", 3, [("echo", 3)])


def test_exit_midway_lets_the_batches_received_finish_then_ends_the_server(
    served: tuple[Any, Stepper, threading.Thread],
) -> None:
    """A stopping worker never cuts a batch short: its jobs get their answer, the waiting one's too."""
    conn, _pipeline, server = served
    _put(conn, ("run", 1, "m", ["a"], [1]))
    running(conn, 1)
    _put(conn, ("run", 2, "m", ["b"], [2]))
    _put(conn, ("exit",))
    assert answer(conn) == ("done", 1, [("echo", 1)])
    assert answer(conn) == ("done", 2, [("echo", 2)])
    server.join(5)
    assert not server.is_alive()


@pytest.mark.parametrize(("request_", "error", "text"), [
    ("broken", ModelError, "ValueError: the model broke"),
    ("oom", OutOfMemory, "does not fit in device memory"),  # worker/batching.py halves the batch on this
    ("unpicklable", ModelError, "cannot be sent"),
])
def test_a_failed_batch_answers_a_coded_error_and_the_server_serves_on(
    served: tuple[Any, Stepper, threading.Thread], request_: str, error: type, text: str,
) -> None:
    conn, _pipeline, _server = served
    _put(conn, ("run", 1, "m", [request_], [1]))
    kind, batch_id, exc = answer(conn)
    assert (kind, batch_id) == ("error", 1) and type(exc) is error and text in exc.message
    _put(conn, ("run", 2, "m", ["a"], [3]))
    assert answer(conn) == ("done", 2, [("echo", 3)])


def test_gpu_memory_figures_are_reported_when_they_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the models in a process of their own only the model process sees CUDA; its figures
    reach the worker's heartbeat and /metrics as "memory" messages: once up, then after a batch
    that changed them."""
    from worker import model_process

    figures = [[("cuda:3", 100.0, 200.0)]]
    monkeypatch.setattr(model_process, "gpu_memory", lambda: figures[-1])

    class Allocating(Stepper):
        def infer_batch(self, requests: list[Any], inputs: list[Any], progress: Any) -> list[Any]:
            if requests[0] == "grow":
                figures.append([("cuda:3", 150.0, 256.0)])
            return super().infer_batch(requests, inputs, progress)

    worker_end, model_end = Pipe()
    server = threading.Thread(target=_ModelServer(model_end, {"m": Allocating()}).serve, daemon=True)
    server.start()
    try:
        assert _get(worker_end) == ("memory", [("cuda:3", 100.0, 200.0)])
        for batch_id, request in enumerate(["a", "grow", "a"], start=1):
            _put(worker_end, ("run", batch_id, "m", [request], [batch_id]))
        assert answer(worker_end) == ("done", 1, [("echo", 1)])  # unchanged figures: nothing sent
        assert answer(worker_end) == ("done", 2, [("echo", 2)])
        assert _get(worker_end) == ("memory", [("cuda:3", 150.0, 256.0)])
        assert answer(worker_end) == ("done", 3, [("echo", 3)])
    finally:
        _put(worker_end, ("exit",))
        server.join(5)


def test_reported_gpu_memory_is_what_the_heartbeat_and_metrics_show() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from worker.device import gpu_memory, report_gpu_memory
    from worker.heartbeat import _memory_mb
    from worker.metrics import _LiveCollector

    assert gpu_memory() == []  # the CPU: no CUDA in this process, nothing reported
    report_gpu_memory([("cuda:3", 100 * 2**20, 200 * 2**20)])
    try:
        assert gpu_memory() == [("cuda:3", 100 * 2**20, 200 * 2**20)]
        assert _memory_mb()["gpu_allocated"] == 100.0 and _memory_mb()["gpu_reserved"] == 200.0
        registry = CollectorRegistry()
        registry.register(_LiveCollector(lambda: "ready"))
        text = generate_latest(registry).decode()
        assert 'visionq_gpu_memory_used_bytes{device="cuda:3"} 1.048576e+08' in text
        assert 'visionq_gpu_memory_reserved_bytes{device="cuda:3"} 2.097152e+08' in text
    finally:
        report_gpu_memory([])


def test_tensor_outputs_cross_with_storage_of_their_own(served: tuple[Any, Stepper, threading.Thread]) -> None:
    import torch

    conn, _pipeline, _server = served
    whole = torch.arange(1000.0)
    _put(conn, ("run", 1, "m", ["a"], [whole[:3]]))
    _kind, _batch_id, [(_, view)] = answer(conn)
    assert view.tolist() == [0.0, 1.0, 2.0]
    assert view.untyped_storage().nbytes() == 3 * 4  # not the 1000 floats it was a view of
