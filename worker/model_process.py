"""The models in a process of their own (VISIONQ_MODEL_PROCESS=true).

The worker process keeps everything that waits or talks to Redis and storage: Celery's
consumer, the transitions, input fetch and decode, outputs and result.json, and batch
formation (worker/batching.py). The model process loads the pipelines (worker/loader.py) and
runs each batch's `run_batch`, pre- and post-processing included, under an interpreter lock of
its own. In one process, Celery's per-message Python (the consumer held the lock in 38 % of the
samples next to a tiny caption model's 50 %, docs/performance.md) competes with a Python-heavy
model (a diffusers loop launches its kernels from Python); here it runs beside it.

One pipe, one batch at a time (the worker's model thread is its only caller). The worker sends
("run", model, requests, images); the model process answers ("progress", fraction) at each of
the pipeline's checkpoints and waits for "go", or "halt" when the worker's checkpoint raised
(a cancel, the time limit, a refused start): it then unwinds the batch and answers "stopped".
A batch ends with ("done", results) or ("error", a VisionqError). The model process dies with
the worker (PR_SET_PDEATHSIG, and it exits at the pipe's end); a model process that dies ends
the worker (exit 70), so that its unacknowledged messages are delivered again and
VISIONQ_MAX_ATTEMPTS bounds a job that kills it each time.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, Hashable

from tasks.errors import ModelError, VisionqError
from tasks.settings import Settings
from worker.pipelines.base import PipelineResult, ProgressCallback

log = logging.getLogger("visionq.worker")

EXIT_MODEL_PROCESS_LOST = 70  # EX_SOFTWARE, as a worker that stopped on its own
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _Served:
    """What the worker needs of a pipeline loaded in the model process."""

    model_label: str
    batches: bool
    preprocesses: bool  # it has a per-job `preprocess`, run ahead in the model process
    # The pipeline class's batch_key, called without an instance: a batch key is a function
    # of the request alone (worker/pipelines/base.py).
    batch_key: Callable[[Any, Any], Hashable | None]


@dataclass(frozen=True)
class _Prepared:
    """A job's input, sent to the model process ahead of its batch and preprocessed there
    while the model runs other jobs: the batch then carries only this key."""

    key: int


class _Halt(BaseException):
    """The worker's checkpoint raised: the model process unwinds the batch. A BaseException, so
    that call_pipeline does not report it as a model failure."""


class ModelProcess:
    """The model process, seen from the worker. Any thread may send (under a lock); only the
    worker's model thread receives, one batch at a time."""

    def __init__(self, settings: Settings, names: list[str], device: str) -> None:
        context = multiprocessing.get_context("spawn")  # never fork: CUDA and loaded weights do not survive it
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, settings, names, device, os.getpid()), name="visionq-model-process",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._sending = threading.Lock()
        self._keys = itertools.count()

    def load(self) -> dict[str, RemotePipeline]:
        """Wait until the model process has loaded and warmed up its pipelines; their stand-ins
        here, by model name. Raises what loading raised there (a VisionqError)."""
        from worker import loader

        message = self._recv()
        if message[0] == "error":
            self.stop()
            raise message[1]
        _, served, loads = message
        loader.add_loads(loads)
        return {name: RemotePipeline(self, name, info) for name, info in served.items()}

    def prepare(self, name: str, request: Any, image: Any) -> _Prepared:
        """Start preprocessing a job's input in the model process (on the job's task thread)."""
        prepared = _Prepared(next(self._keys))
        self._send(("prep", prepared.key, name, request, image))
        return prepared

    def release(self, prepared: _Prepared) -> None:
        """The job is done with its preprocessed input (it ran, failed or was refused)."""
        self._send(("drop", prepared.key))

    def run_batch(self, name: str, requests: list[Any], inputs: list[Any],
                  progress: ProgressCallback) -> list[PipelineResult]:
        """On the worker's model thread. Progress comes without a round trip; the answer "halt"
        only when the checkpoint raised, and then what it raised is this batch's outcome."""
        self._send(("run", name, requests, inputs))
        while True:
            message = self._recv()
            if message[0] == "progress":
                try:
                    progress(message[1])
                except BaseException:
                    self._send(("halt",))
                    while self._recv()[0] not in ("stopped", "done", "error"):
                        pass
                    raise
            elif message[0] == "done":
                return message[1]
            else:
                raise message[1]

    def stop(self) -> None:
        """Ask the model process to exit; end it if it does not."""
        try:
            with self._sending:
                self._conn.send(("exit",))
        except OSError:
            pass
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._sending:
                self._conn.send(message)
        except OSError:
            self._lost()

    def _recv(self) -> tuple[Any, ...]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._lost()
            raise  # not reached

    def _lost(self) -> None:
        self._process.join(1.0)
        log.critical("the model process exited (code %s); ending this worker so that its jobs are delivered again",
                     self._process.exitcode)
        os._exit(EXIT_MODEL_PROCESS_LOST)


class RemotePipeline:
    """A pipeline of the model process, as the worker's runtime and model thread use it."""

    def __init__(self, process: ModelProcess, name: str, served: _Served) -> None:
        self.process = process
        self.name = name
        self.model_label = served.model_label
        self.batches = served.batches
        self._batch_key = served.batch_key
        if served.preprocesses:
            self.preprocess = lambda request, image: process.prepare(name, request, image)

    def warm_up(self) -> None:
        pass  # warmed up in the model process, before it answered

    def batch_key(self, request: Any) -> Hashable | None:
        return self._batch_key(None, request)

    def run_batch(self, requests: list[Any], images: list[Any], progress: ProgressCallback) -> list[PipelineResult]:
        return self.process.run_batch(self.name, requests, images, progress)

    def release(self, model_input: Any) -> None:
        if isinstance(model_input, _Prepared):
            self.process.release(model_input)


# ---------------------------------------------------------------------------- the model process

PREP_THREADS = 2


def _serve(conn: Connection, settings: Settings, names: list[str], device: str, worker_pid: int) -> None:
    from tasks.logs import configure_logging
    from worker import loader
    from worker.process import prepare_torch

    _die_with(worker_pid)
    # Ctrl-C reaches the whole process group: the worker shuts down warmly and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings, os.environ)
    try:
        prepare_torch(settings, device)
        pipelines = loader.load_served(settings, names, device)
    except VisionqError as exc:
        conn.send(("error", exc))
        return
    except Exception as exc:  # noqa: BLE001 - the worker reports it as a model that cannot load
        log.exception("loading failed")
        conn.send(("error", ModelError(f"{type(exc).__name__}: {exc}")))
        return
    conn.send(("ready", {
        name: _Served(p.model_label, getattr(p, "batches", True), hasattr(p, "preprocess"), type(p).batch_key)
        for name, p in pipelines.items()
    }, loader.model_loads()))
    _ModelServer(conn, pipelines).serve()


class _ModelServer:
    """The model process's side: a reader thread takes every message (preprocessing starts at
    once, on PREP_THREADS threads); this process's main thread runs the batches in order."""

    def __init__(self, conn: Connection, pipelines: dict[str, Any]) -> None:
        self.conn = conn
        self.pipelines = pipelines
        self.prepared: dict[int, Future] = {}
        self.prep = ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="visionq-prep")
        self.batches: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.halted = threading.Event()
        self.sending = threading.Lock()

    def serve(self) -> None:
        threading.Thread(target=self._read, name="visionq-model-reader", daemon=True).start()
        while True:
            message = self.batches.get()
            if message[0] == "exit":
                return
            self._run(*message[1:])

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.batches.put(("exit",))
                return
            if message[0] == "prep":
                _, key, name, request, image = message
                self.prepared[key] = self.prep.submit(self.pipelines[name].preprocess, request, image)
            elif message[0] == "drop":
                self.prepared.pop(message[1], None)
            elif message[0] == "halt":
                self.halted.set()  # read in order: always before the next batch's "run"
            else:
                self.batches.put(message)

    def _run(self, name: str, requests: list[Any], inputs: list[Any]) -> None:
        from worker.batching import call_pipeline
        from worker.pipelines.base import infer_batch

        self.halted.clear()
        try:
            ready = [self.prepared[i.key].result() if isinstance(i, _Prepared) else i for i in inputs]
            finishers = call_pipeline(lambda: infer_batch(self.pipelines[name], requests, ready, self._checkpoint))
            results = [call_pipeline(finish) for finish in finishers]
        except _Halt:
            self._send(("stopped",))
        except VisionqError as exc:
            self._send(("error", exc))
        except Exception as exc:  # noqa: BLE001 - a preprocessing failure fails its jobs only
            self._send(("error", ModelError(f"{type(exc).__name__}: {exc}")))
        else:
            self._send(("done", results))

    def _checkpoint(self, fraction: float) -> None:
        # No round trip: the worker answers only to stop the batch.
        self._send(("progress", fraction))
        if self.halted.is_set():
            raise _Halt

    def _send(self, message: tuple[Any, ...]) -> None:
        with self.sending:
            self.conn.send(message)


def _die_with(worker_pid: int) -> None:
    """SIGKILL this process when the worker dies, however it dies (Linux; elsewhere the pipe's
    end is what ends it)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != worker_pid:  # the worker died before the line above
        os._exit(0)
