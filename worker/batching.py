"""The model thread: every inference of a worker runs here, batched when it can be.

Celery's task threads fetch and decode inputs, then hand the model call to this
one thread and wait; meanwhile they encode and upload the previous job's outputs,
so the GPU never waits for PNG encoding or S3. Jobs of one kind that are
compatible (the pipeline's `batch_key`) and arrive within `max_wait_ms` of each
other run as one forward pass, up to the kind's `max_batch` (Triton's dynamic
batching, Ray Serve's @serve.batch). Each job keeps its own record, outputs and
errors: a batch that fails for another reason than memory is re-run job by job,
so one bad job fails alone; a batch that runs out of memory is split in halves.
A pipeline with `infer_batch` leaves each job's post-processing (masks, overlays) to
the job's task thread (its `finish`): the model thread runs only what batches. Messages stay
unacknowledged in Redis until their own task thread finishes, so batching keeps
Celery's delivery guarantees (acks_late, redelivery on crash).

With the models in a process of their own (worker/model_process.py) there are two model
threads: while one batch runs there, the next is formed and sent, and waits in the model
process's pipe; its jobs are taken (turn `running`) when it starts running there.

A job turns `running` when the model thread takes it, but the model does not wait for
that Redis round trip: the job's own task thread makes it while the model already
computes (on two cores the round trip took 1.7-2.2 ms of a 23 ms tiny SD job, Redis
waiting for a core). A job that the transition refuses (canceled while queued, already
final) stops at the model's next checkpoint, or its share of a batch is thrown away; it
never gets a result. A redelivered message (its job may have crashed its previous
workers, VISIONQ_MAX_ATTEMPTS) is started before the model takes it, as before.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from tasks.errors import ModelError, OutOfMemory, VisionqError
from tasks.kinds import JobKind
from tasks.record import utc_now
from worker.pipelines.base import Pipeline, PipelineResult, finish, infer_batch, no_progress

log = logging.getLogger("visionq.worker")
MAX_ADAPTIVE_WAIT_S = 0.1  # the longest a batch under load waits for companions
# Model threads when the models run in a process of their own (worker/model_process.py): one
# batch runs there while the next waits in its pipe.
BATCHES_IN_FLIGHT = 2
# Put on the queue when an announced job will not come: a batch waiting for companions
# blocks on the queue (no polling that would take the GIL from the task threads decoding
# them) and this wakes it to look again whether any are still on their way.
_RECOUNT = object()


@dataclass
class _Item:
    kind: JobKind
    pipeline: Pipeline
    request: Any
    model_input: Any  # what the pipeline's preprocess made of the job's image
    progress: Callable[[float], None]
    job_id: str
    limit_s: float
    start: Callable[[str], None]  # marks the job running, given when the model took it; may raise to drop it
    key: Hashable | None
    priority: int = 0  # kombu level: lower runs first
    start_first: bool = False  # started before the model takes it (a redelivery), not alongside
    future: Future = field(default_factory=Future)
    taken: threading.Event = field(default_factory=threading.Event)  # the model thread took it
    started: Future = field(default_factory=Future)  # the start's outcome (None, or why it was refused)
    taken_at: str = ""  # when the model thread took it (the record's started_at)

    def begin(self) -> None:
        """Run `start`, keeping its outcome for the model thread (on the job's own thread)."""
        try:
            self.start(self.taken_at)
        except BaseException as exc:  # noqa: BLE001 - the model thread hands it back to run()
            self.started.set_result(exc)
        else:
            self.started.set_result(None)

    def refusal(self) -> BaseException | None:
        """Why the start refused this job, or None; waits for the start to end."""
        return self.started.result()

    def checkpoint(self, fraction: float) -> None:
        """The job's progress, once it has started: a refused job stops the model here."""
        if self.refusal() is not None:
            raise _Refused  # run() hands the job its refusal (_fail)
        self.progress(fraction)


class _Refused(BaseException):
    """Stops a model run whose job's start was refused. A BaseException, so that call_pipeline
    does not report it as a model failure."""


class ModelExecutor:
    """Runs pipeline calls on one thread, in batches where the kind allows (on two, one batch
    each, when the models run in a process of their own: BATCHES_IN_FLIGHT)."""

    def __init__(self, max_batch: dict[JobKind, int], max_wait_ms: float, threads: int = 1) -> None:
        """`threads`: model threads, each forming a batch and running it; more than one only when the
        models run in a process of their own, which queues the batches (worker/model_process.py)."""
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._queue: queue.Queue[Any] = queue.Queue()  # _Item, or _RECOUNT
        self._pending: list[_Item] = []
        # Jobs whose task thread is fetching their input: the only companions worth
        # waiting for. With none on the way, a batch runs at once (an idle worker pays
        # no batching delay).
        self._arriving = 0
        self._arriving_lock = threading.Lock()
        # Under load (work was waiting when the last batch formed), a batch waits for companions up
        # to half its pipeline's recent batch time (a whole one with the model process), not just
        # max_wait_ms: on a small machine the next jobs' fetch and decode take longer than 5 ms,
        # and a job that misses this batch waits a whole batch run for the next. An idle worker
        # never waits (_collect).
        self._batch_s: dict[int, float] = {}  # by id(pipeline): moving average of a batch's run time
        self._under_load = False
        self._collecting = threading.Lock()  # one thread forms a batch at a time
        # Batches handed to the model and not yet ended, and redelivered batches of a pipeline that
        # queues (waiting for none to be ahead, or running): guarded by _flight.
        self._flight = threading.Condition()
        self._in_flight = 0
        self._redeliveries = 0
        for number in range(threads):
            name = "visionq-model" if threads == 1 else f"visionq-model-{number + 1}"
            threading.Thread(target=self._loop, name=name, daemon=True).start()

    def expect(self) -> None:
        """A task thread has taken a job and will hand it over soon."""
        with self._arriving_lock:
            self._arriving += 1

    def cancel_expect(self) -> None:
        """The job announced with expect() will not come (it failed before the model)."""
        with self._arriving_lock:
            self._arriving -= 1
        self._queue.put(_RECOUNT)

    def run(
        self, kind: JobKind, pipeline: Pipeline, request: Any, model_input: Any,
        progress: Callable[[float], None], job_id: str, limit_s: float, start: Callable[[str], None],
        priority: int = 0, start_first: bool = False, image: Any = None,
    ) -> tuple[PipelineResult, int, float]:
        """(result, batch size, milliseconds of model and of this job's own post-processing) for this
        job; blocks until done. `model_input` is what the pipeline's preprocess made of the job's
        `image`; the post-processing (`finish`, given both) runs here, on the caller's thread.
        `start` runs here once the model thread takes the job, while the model runs (`start_first`:
        before)."""
        key = None
        if self.max_batch.get(kind, 1) > 1:
            own_key = pipeline.batch_key(request)
            # Two models of one kind never share a batch: the pipeline is part of the key.
            key = None if own_key is None else (kind, id(pipeline), own_key)
        item = _Item(kind, pipeline, request, model_input, progress, job_id, limit_s, start, key, priority, start_first)
        with self._arriving_lock:
            self._queue.put(item)
            self._arriving = max(0, self._arriving - 1)
        item.taken.wait()
        item.begin()
        attend = getattr(progress, "attend", None)  # the job's I/O while the model runs it (worker/runtime.py)
        if attend is not None and item.refusal() is None:
            attend(item.future)
        output, batch_size, model_ms = item.future.result()
        # The last checkpoint is here, not on the model thread: there it would wait for this
        # job's running transition (its refusal decides), and the model would idle behind a
        # Redis round trip instead of taking the next job.
        try:
            item.checkpoint(1.0)  # refused at its start, canceled or over time: it ends here
        except _Refused:
            raise item.refusal() from None
        started = time.perf_counter()
        # This job's own post-processing, here rather than on the model thread.
        result = call_pipeline(lambda: finish(pipeline, request, image, output))
        return result, batch_size, round(model_ms + _ms_since(started), 3)

    def _loop(self) -> None:
        while True:
            with self._collecting:
                batch = self._collect()
            self._execute(batch)

    def _collect(self) -> list[_Item]:
        while not self._pending:
            item = self._queue.get()
            if item is not _RECOUNT:
                self._pending.append(item)
        self._drain_queue()
        # Jobs reserved by this worker keep their priority: the highest goes first (FIFO within one).
        first = min(self._pending, key=lambda item: item.priority)
        self._pending.remove(first)
        batch = [first]
        limit = self.max_batch.get(first.kind, 1) if first.key is not None else 1
        for item in sorted(self._pending, key=lambda item: item.priority):
            if len(batch) >= limit:
                break
            if item.key == first.key:
                self._pending.remove(item)
                batch.append(item)
        under_load = self._under_load
        wait_s = self.max_wait_s
        if under_load and limit > 1:
            # A batch of a pipeline that queues batches waits behind the one running there anyway:
            # it may wait for companions up to a whole batch time.
            share = 1.0 if getattr(first.pipeline, "queues_batches", False) else 0.5
            wait_s = max(wait_s, min(MAX_ADAPTIVE_WAIT_S, self._batch_s.get(id(first.pipeline), 0.0) * share))
        deadline = time.monotonic() + wait_s
        while len(batch) < limit:
            remaining = deadline - time.monotonic()
            expecting = self._arriving > 0 or under_load
            try:
                if remaining > 0 and expecting:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _RECOUNT:
                continue
            if item.key == first.key:
                batch.append(item)
            else:
                self._pending.append(item)
        # More work came or was on its way while this batch formed: the next one waits for companions.
        self._under_load = len(batch) > 1 or bool(self._pending) or self._arriving > 0
        return batch

    def _drain_queue(self) -> None:
        """Everything queued into _pending (wake-ups dropped)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _RECOUNT:
                self._pending.append(item)

    def _execute(self, batch: list[_Item]) -> None:
        # A pipeline that queues batches (the model process, two in flight) says when one starts
        # running there: its jobs are taken then, so that waiting behind the batch ahead counts
        # against neither their time limit nor their attempts. A redelivery starts before the
        # model runs it: the start refuses a job whose runs keep killing their worker, and this
        # one must not be the next. In a queued pipeline such a batch first waits for the batches
        # ahead to end, so that it starts as it is sent, and no other batch is sent meanwhile.
        queued = getattr(batch[0].pipeline, "queues_batches", False)
        redelivered = queued and any(item.start_first for item in batch)
        with self._flight:
            if redelivered:  # other batches wait meanwhile: under load it would never find none ahead
                self._redeliveries += 1
                self._flight.wait_for(lambda: self._in_flight == 0)
            elif queued:
                self._flight.wait_for(lambda: self._redeliveries == 0)
            self._in_flight += 1
        try:
            if not queued or redelivered:
                _take(batch)
            batch = [item for item in batch if not item.start_first or self._start_first(item)]
            if batch:
                self._run(batch, (lambda: _take(batch)) if queued and not redelivered else None)
        finally:
            _take(batch)  # a batch that ended without starting: its task threads see how it ended
            with self._flight:
                self._in_flight -= 1
                self._redeliveries -= redelivered
                self._flight.notify_all()

    @staticmethod
    def _start_first(item: _Item) -> bool:
        refusal = item.refusal()
        if refusal is not None:
            item.future.set_exception(refusal)
        return refusal is None

    def _run(self, batch: list[_Item], on_start: Callable[[], None] | None = None) -> None:
        """`on_start`: the batch is queued by its pipeline; called when it starts running there."""
        started = time.perf_counter()
        pipeline = batch[0].pipeline
        # A job alone reports its own progress (and may be canceled midway); in a
        # batch of several, each job's checkpoint comes once the batch is done.
        progress = batch[0].checkpoint if len(batch) == 1 else no_progress

        def begin() -> None:
            nonlocal started
            started = time.perf_counter()  # run_ms leaves out the wait in the queue
            on_start()

        try:
            results = call_pipeline(
                lambda: infer_batch(pipeline, [i.request for i in batch], [i.model_input for i in batch], progress,
                                    on_start=None if on_start is None else begin)
            )
        except OutOfMemory as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning("batch of %d ran out of memory; retrying in halves", len(batch))
            half = len(batch) // 2
            self._run(batch[:half], on_start)
            self._run(batch[half:], on_start)
            return
        except VisionqError as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning("batch of %d failed; running its jobs one by one", len(batch))
            for item in batch:
                self._run([item], on_start)
            return
        except BaseException as exc:  # noqa: BLE001 - JobCanceled and the like, delivered to the jobs' threads
            for item in batch:
                _fail(item, exc)
            return
        run_ms = _ms_since(started)
        previous = self._batch_s.get(id(pipeline))
        seconds = run_ms / 1000
        self._batch_s[id(pipeline)] = seconds if previous is None else 0.7 * previous + 0.3 * seconds
        for item, result in zip(batch, results):
            item.future.set_result((result, len(batch), run_ms))  # its own thread makes the last checkpoint


def _take(batch: list[_Item]) -> None:
    """The model took these jobs: their task threads start them now (once; later calls change nothing)."""
    taken_at = utc_now()
    for item in batch:
        if not item.taken.is_set():
            item.taken_at = taken_at
            item.taken.set()


def _fail(item: _Item, exc: BaseException) -> None:
    """`exc` for the job, unless its start refused it: then that refusal is what happened to it."""
    item.future.set_exception(item.refusal() or exc)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def call_pipeline(call: Callable[[], Any]) -> Any:
    """Run a model call, turning whatever it raises into a coded error."""
    try:
        return call()
    except VisionqError:
        raise
    except Exception as exc:  # noqa: BLE001 - any model failure fails its jobs only
        if _is_out_of_memory(exc):
            _free_device_memory()
            raise OutOfMemory(f"the job does not fit in device memory: {exc}") from exc
        log.exception("model failed")
        raise ModelError(f"{type(exc).__name__}: {exc}") from exc


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
