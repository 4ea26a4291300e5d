"""The models in a process of their own (VISIONQ_MODEL_PROCESS=true).

A tiny or Python-heavy model is thousands of torch calls a batch; each releases the
interpreter lock and takes it back, and in one process any other runnable thread (Celery's
consumer, the task threads decoding the next jobs and storing the last ones) takes it in
between and keeps it for its switch interval: the model thread ran at 0.3-0.5x its speed
beside them (CPython's convoy effect; `python -m bench --quick convoy`, docs/performance.md).

Here the weights live in a spawned model process with one thread, which only runs each
batch's `infer_batch`. The worker process keeps everything else: Celery, the transitions,
input fetch and decode, each pipeline's `preprocess` and `finish` (from a copy of the pipeline
loaded without weights, its model built on torch's "meta" device: processors, tokenizer and
config only), outputs and batch formation (worker/batching.py). What crosses the pipe is a
batch's requests and preprocessed inputs, then its outputs, copied to the CPU.

Two batches in flight: the worker has two model threads (worker/batching.py), and while the
model process runs one batch the next already waits in its pipe, so the model never idles for
a round trip between batches (measured: 0.3-0.6 ms a tiny SD job, 1.5-5 ms a tiny caption batch
of 8, before). Each batch has an id. The worker sends ("run", id, model, requests, inputs); the
model process runs batches in the order they came, says ("started", id) as it starts one (its
jobs turn `running` then: waiting behind the batch ahead counts against neither their time
limit nor their attempts), and answers ("progress", id, fraction) at each of the pipeline's
checkpoints without waiting. The worker sends ("halt", id) when its checkpoint raised (a
cancel, the time limit, a refused start): the batch stops at its next checkpoint and answers
("stopped", id); a batch halted before it started would answer that without running. A batch
ends with ("done", id, outputs) or ("error", id, a VisionqError). "exit" ends the model process
once the batches it has read run (a worker exits only once its jobs are done, so none are left
unread). The model process also sends ("memory", rows) once loaded and after any batch that
changed them: its GPU memory figures, which the worker's heartbeat and /metrics show
(worker/device.py `gpu_memory`). One reader thread in the worker hands each message to its
batch's thread. Messages are plain pickles (`_put`, `_get`): multiprocessing's own pickler
would move tensors through /dev/shm, 64 MiB in a default container.

The model process dies with the worker (PR_SET_PDEATHSIG, and it exits at the pipe's end); a
model process that dies ends the worker (exit 70), so that its unacknowledged messages are
delivered again and VISIONQ_MAX_ATTEMPTS bounds a job that kills it each time.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Hashable

import torch

from tasks.errors import ModelError, VisionqError
from tasks.settings import Settings
from worker.batching import call_pipeline
from worker.device import gpu_memory, report_gpu_memory
from worker.heartbeat import count_memory_of
from worker.leases import exit_giving_back
from worker.pipelines.base import Pipeline, PipelineResult, ProgressCallback, infer_batch, input_side, run_parts

log = logging.getLogger("visionq.worker")

EXIT_MODEL_PROCESS_LOST = 70  # EX_SOFTWARE, as a worker that stopped on its own
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Served:
    """What the worker needs to know of a pipeline loaded in the model process."""

    model_label: str
    batches: bool
    input_side: int | None
    # Whether it has `preprocess` or `finish`, run in the worker by a copy without weights.
    host_half: bool
    # The pipeline class's batch_key, called without an instance: every pipeline's reads only
    # the request (worker/pipelines/base.py).
    batch_key: Callable[[Any, Any], Hashable | None]


class ModelProcess:
    """The model process, seen from the worker: the worker's model threads run batches
    (`infer_batch`, several at once); `stop` may come from any thread."""

    def __init__(self, settings: Settings, names: list[str], device: str) -> None:
        context = multiprocessing.get_context("spawn")  # never fork: CUDA and loaded weights do not survive it
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, settings, names, device, os.getpid()), name="visionq-model-process",
            daemon=True,
        )
        self._process.start()
        child.close()
        log.info("models in a process of their own (VISIONQ_MODEL_PROCESS): pid %s", self._process.pid)
        count_memory_of(self._process.pid)  # the heartbeat's rss is the worker's, both processes
        self._settings, self._names, self._device = settings, names, device
        self._sending = threading.Lock()
        self._stopping = False
        self._ids = itertools.count(1)
        self._answers: dict[int, queue.SimpleQueue[tuple[Any, ...]]] = {}  # batch id -> its messages
        # Model name -> weights bytes, as the model process sized them before loading (filled by `pipelines`).
        self.weights_bytes: dict[str, int] = {}
        # An idle worker never touches the pipe: this thread notices the model process's end.
        threading.Thread(target=self._watch, name="visionq-model-process-watch", daemon=True).start()

    def pipelines(self) -> dict[str, Pipeline]:
        """Wait until the model process has loaded and warmed up its pipelines, load here the
        copies without weights of those that preprocess or finish their jobs, and return the
        pipelines as the worker uses them, by model name. Raises what loading raised there."""
        from worker import loader
        from worker.loading import pick_dtype, shapes_only

        message = self._recv()
        if message[0] == "error":
            raise message[1]
        _, served, loads, weights = message
        threading.Thread(target=self._read, name="visionq-model-process-reader", daemon=True).start()
        loader.add_loads(loads)
        self.weights_bytes.update(weights)
        names = [name for name, info in served.items() if info.host_half and name in self._names]
        with shapes_only():
            hosts = loader.with_role_views({
                name: loader.load_served_pipeline(name, self._settings, "meta", pick_dtype(self._device))
                for name in names
            })
        return {name: RemotePipeline(self, name, info, hosts.get(name)) for name, info in served.items()}

    def infer_batch(self, name: str, requests: list[Any], inputs: list[Any], progress: ProgressCallback,
                    on_start: Callable[[], None] | None = None) -> list[Any]:
        """On one of the worker's model threads; `on_start` is called when the batch starts running
        there. Progress comes without a round trip; the answer "halt" only when the checkpoint
        raised, and then what it raised is this batch's outcome."""
        batch_id = next(self._ids)
        answers: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._answers[batch_id] = answers
        try:
            self._send(("run", batch_id, name, requests, inputs))
            while True:
                message = answers.get()
                if message[0] == "started":
                    if on_start is not None:
                        on_start()
                elif message[0] == "progress":
                    try:
                        progress(message[2])
                    except BaseException:
                        self._send(("halt", batch_id))
                        while answers.get()[0] not in ("stopped", "done", "error", "lost"):
                            pass
                        raise
                elif message[0] == "done":
                    return message[2]
                elif message[0] == "lost":
                    raise SystemExit(0)  # the worker is stopping: its model thread ends here
                else:
                    raise message[2]
        finally:
            del self._answers[batch_id]

    def stop(self) -> None:
        """Ask the model process to exit; end it if it does not."""
        self._stopping = True
        # The lock may be held by a send blocked behind a batch that does not read its pipe
        # (no checkpoint): then the process is ended below without being asked.
        if self._sending.acquire(timeout=STOP_TIMEOUT_S):
            try:
                _put(self._conn, ("exit",))
            except OSError:
                pass
            finally:
                self._sending.release()
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _read(self) -> None:
        """The reader thread: each message to its batch's thread."""
        while True:
            try:
                message = _get(self._conn)
            except (EOFError, OSError):
                if self._stopping:  # the model threads end (SystemExit) rather than wait forever
                    for answers in list(self._answers.values()):
                        answers.put(("lost",))
                self._lost()
                return
            except BaseException:  # noqa: BLE001 - a message that cannot be read: its batch could never end
                log.exception("a message from the model process could not be read; ending this worker so that "
                              "its jobs are delivered again")
                exit_giving_back(EXIT_MODEL_PROCESS_LOST)
            if message[0] == "memory":
                report_gpu_memory(message[1])
            else:
                answers = self._answers.get(message[1])
                if answers is not None:  # none: a halted batch's thread has gone
                    answers.put(message)
                del answers
            del message  # not kept alive, outputs and all, while the next is awaited

    def _watch(self) -> None:
        wait([self._process.sentinel])
        if not self._stopping:
            self._lost()

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._sending:
                _put(self._conn, message)
        except OSError:
            self._lost()

    def _recv(self) -> tuple[Any, ...]:
        try:
            return _get(self._conn)
        except (EOFError, OSError):
            self._lost()
            raise  # not reached

    def _lost(self) -> None:
        self._process.join(1.0)
        if self._stopping:
            raise SystemExit(0)  # the worker is stopping: this thread ends here
        log.critical("the model process exited (code %s); ending this worker so that its jobs are delivered again",
                     self._process.exitcode)
        exit_giving_back(EXIT_MODEL_PROCESS_LOST)


class RemotePipeline:
    """A pipeline of the model process, as the worker's runtime and model threads use it: its
    `preprocess` and `finish` run here, on the copy without weights (`host`)."""

    queues_batches = True  # its batches wait in the model process's pipe: infer_batch takes on_start

    def __init__(self, process: ModelProcess, name: str, served: Served, host: Pipeline | None) -> None:
        self.process = process
        self.name = name
        self.model_label = served.model_label
        self.batches = served.batches
        self.input_side = served.input_side
        self._batch_key = served.batch_key
        for part in ("preprocess", "finish"):
            own = getattr(host, part, None)
            if own is not None:
                setattr(self, part, own)

    def warm_up(self) -> None:
        pass  # warmed up in the model process, before it answered

    def batch_key(self, request: Any) -> Hashable | None:
        return self._batch_key(None, request)

    def infer_batch(self, requests: list[Any], inputs: list[Any], progress: ProgressCallback,
                    on_start: Callable[[], None] | None = None) -> list[Any]:
        return self.process.infer_batch(self.name, requests, inputs, progress, on_start)

    def run_batch(self, requests: list[Any], images: list[Any], progress: ProgressCallback) -> list[PipelineResult]:
        return run_parts(self, requests, images, progress)


# ---------------------------------------------------------------------------- the model process

class _Halt(BaseException):
    """The worker's checkpoint raised: the batch unwinds. A BaseException, so that call_pipeline
    does not report it as a model failure."""


def _serve(conn: Connection, settings: Settings, names: list[str], device: str, worker_pid: int) -> None:
    from tasks.logs import configure_logging
    from worker import loader
    from worker.process import prepare_torch

    _die_with(worker_pid)
    # Ctrl-C and a supervisor's SIGTERM may reach the whole process group: the worker drains,
    # then ends this process ("exit", or its own end).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(settings, os.environ)
    try:
        # Sized here, not in the worker: asking for the GPU's memory would give the worker a CUDA context.
        weights = loader.check_memory(settings, names, device)
        prepare_torch(settings, device)
        pipelines = loader.with_role_views(loader.load_served(settings, names, device))
    except Exception as exc:  # noqa: BLE001 - the worker reports it as a model that cannot load
        if not isinstance(exc, VisionqError):
            log.exception("loading failed")
            exc = ModelError(f"{type(exc).__name__}: {exc}")
        _put(conn, ("error", exc))
        _wait_for_exit(conn)  # ending now would read as a crash to the worker's watch
        return
    ready = {name: _served(pipeline) for name, pipeline in pipelines.items()}
    _put(conn, ("ready", ready, loader.model_loads(), weights))
    _ModelServer(conn, pipelines).serve()


def _wait_for_exit(conn: Connection) -> None:
    try:
        while _get(conn)[0] != "exit":
            pass
    except (EOFError, OSError):
        pass


def _served(pipeline: Pipeline) -> Served:
    return Served(
        model_label=pipeline.model_label, batches=getattr(pipeline, "batches", True), input_side=input_side(pipeline),
        host_half=hasattr(pipeline, "preprocess") or hasattr(pipeline, "finish"), batch_key=type(pipeline).batch_key,
    )


class _ModelServer:
    """The model process's one thread: it runs the batches in the order they came, reading the
    pipe between batches and at each checkpoint."""

    def __init__(self, conn: Connection, pipelines: dict[str, Pipeline]) -> None:
        self.conn = conn
        self.pipelines = pipelines
        self.waiting: deque[tuple[Any, ...]] = deque()  # "run" messages not yet run
        self.halted: set[int] = set()  # ids of waiting batches halted before they ran
        self.running: int | None = None
        self.exiting = False
        self.memory_reported: list[tuple[str, float, float]] = []

    def serve(self) -> None:
        self._report_memory()
        while self.waiting or not self.exiting:
            if not self.waiting:
                try:
                    self._take(_get(self.conn))
                except (EOFError, OSError):
                    return
                continue
            _, batch_id, name, requests, inputs = self.waiting.popleft()
            if batch_id in self.halted:
                self.halted.discard(batch_id)
                self._answer(("stopped", batch_id))
            else:
                _put(self.conn, ("started", batch_id))
                self._run(batch_id, name, requests, inputs)
                self._report_memory()
            del requests, inputs  # not kept alive while the next one is awaited

    def _report_memory(self) -> None:
        """The GPU memory figures, when they changed, for the worker's heartbeat and /metrics."""
        rows = gpu_memory()
        if rows != self.memory_reported:
            _put(self.conn, ("memory", rows))
            self.memory_reported = rows

    def _take(self, message: tuple[Any, ...]) -> None:
        """A message from the worker, between batches or at a checkpoint."""
        if message[0] == "run":
            self.waiting.append(message)
        elif message[0] == "halt":
            if message[1] == self.running:
                raise _Halt
            if any(waiting[1] == message[1] for waiting in self.waiting):
                self.halted.add(message[1])
            # else a late "halt": the batch had ended
        elif message[0] == "exit":
            self.exiting = True  # once the batches received before it have run

    def _run(self, batch_id: int, name: str, requests: list[Any], inputs: list[Any]) -> None:
        pipeline = self.pipelines[name]
        self.running = batch_id
        try:
            outputs = call_pipeline(lambda: infer_batch(pipeline, requests, inputs, self._checkpoint))
            answer: tuple[Any, ...] = ("done", batch_id, [_portable(output) for output in outputs])
        except _Halt:
            answer = ("stopped", batch_id)
        except VisionqError as exc:
            answer = ("error", batch_id, exc)
        finally:
            self.running = None
        self._answer(answer)

    def _answer(self, answer: tuple[Any, ...]) -> None:
        try:
            _put(self.conn, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an output that cannot cross fails its batch
            log.exception("a batch's answer could not be sent")
            error = ModelError(f"the model's output cannot be sent: {type(exc).__name__}: {exc}")
            _put(self.conn, ("error", answer[1], error))

    def _checkpoint(self, fraction: float) -> None:
        # No round trip: the worker answers only to stop the batch.
        _put(self.conn, ("progress", self.running, fraction))
        while self.conn.poll():
            self._take(_get(self.conn))


def _put(conn: Connection, message: tuple[Any, ...]) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _get(conn: Connection) -> tuple[Any, ...]:
    return pickle.loads(conn.recv_bytes())


def _portable(value: Any) -> Any:
    """`value` as it can cross the pipe: tensors copied to the CPU, each with storage of its own
    (a pickled view would carry its whole batch's storage)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_portable(item) for item in value)
    if isinstance(value, dict):
        return {key: _portable(item) for key, item in value.items()}
    return value


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
