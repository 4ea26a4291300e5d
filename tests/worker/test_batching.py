"""ModelExecutor with stand-in pipelines: grouping, priorities, failures that stay with their job."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tasks.errors import InvalidInput, JobCanceled, ModelError, OutOfMemory
from tasks.kinds import JobKind
from worker.batching import ModelExecutor
from worker.pipelines.base import PipelineResult


class Recorder:
    """A batchable pipeline recording the batches it ran; requests are ints or "bad"/"oom"."""

    model_label = "recorder"

    def __init__(self, fits: int = 100) -> None:
        self.batches: list[list[Any]] = []
        self.fits = fits
        self.gate = threading.Event()

    def batch_key(self, request: Any) -> Any:
        return "odd" if isinstance(request, int) and request % 2 else "even"

    def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
        self.gate.wait(5)
        if "bad" in requests:
            raise InvalidInput("bad request")
        if len(requests) > self.fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        self.batches.append(list(requests))
        return [PipelineResult(output={"echo": r}) for r in requests]


def submit_all(executor: ModelExecutor, pipeline: Recorder, requests: list[Any], priorities: list[int] | None = None):
    results: dict[int, Any] = {}

    def one(i: int, request: Any) -> None:
        try:
            results[i] = executor.run(JobKind.CAPTION, pipeline, request, None, lambda f: None, f"job{i}", 60,
                                      lambda _at: None, (priorities or [0] * len(requests))[i])
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i, r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    return threads, results


def test_compatible_jobs_share_a_batch() -> None:
    pipeline = Recorder()
    executor = ModelExecutor({JobKind.CAPTION: 4}, max_wait_ms=200)
    threads, results = submit_all(executor, pipeline, [1, 2, 3, 4, 5, 6, 7, 9, 11])
    pipeline.gate.set()
    for t in threads:
        t.join()
    assert all(len(b) <= 4 for b in pipeline.batches)
    assert all(len({r % 2 for r in b}) == 1 for b in pipeline.batches)  # never mixes keys
    assert sorted(r for b in pipeline.batches for r in b) == [1, 2, 3, 4, 5, 6, 7, 9, 11]
    assert all(results[i][0].output == {"echo": r} for i, r in enumerate([1, 2, 3, 4, 5, 6, 7, 9, 11]))
    assert max(results[i][1] for i in results) > 1


def test_one_bad_job_fails_alone() -> None:
    pipeline = Recorder()
    pipeline.gate.set()
    executor = ModelExecutor({JobKind.CAPTION: 8}, max_wait_ms=200)
    threads, results = submit_all(executor, pipeline, [2, "bad", 4, 6])
    for t in threads:
        t.join()
    assert isinstance(results[1], InvalidInput)
    assert [results[i][0].output["echo"] for i in (0, 2, 3)] == [2, 4, 6]


def test_out_of_memory_splits_the_batch_then_fails_only_what_cannot_fit() -> None:
    pipeline = Recorder(fits=2)
    pipeline.gate.set()
    executor = ModelExecutor({JobKind.CAPTION: 8}, max_wait_ms=300)
    threads, results = submit_all(executor, pipeline, [2, 4, 6, 8, 10, 12, 14, 16])
    for t in threads:
        t.join()
    assert all(not isinstance(r, Exception) for r in results.values())
    assert max(len(b) for b in pipeline.batches) <= 2

    single = Recorder(fits=0)
    single.gate.set()
    with pytest.raises(OutOfMemory):
        ModelExecutor({JobKind.CAPTION: 1}, 0).run(JobKind.CAPTION, single, 2, None, lambda f: None, "j", 60,
                                                   lambda _at: None)


def test_higher_priority_runs_first_among_reserved_jobs() -> None:
    pipeline = Recorder()
    executor = ModelExecutor({JobKind.CAPTION: 1}, max_wait_ms=0)
    # the first job holds the model; the other three wait in the executor
    threads, _ = submit_all(executor, pipeline, [0], [3])
    import time
    time.sleep(0.2)
    more, _ = submit_all(executor, pipeline, [6, 3, 0 + 2], [6, 3, 0])
    time.sleep(0.2)
    pipeline.gate.set()
    for t in threads + more:
        t.join()
    assert [b[0] for b in pipeline.batches] == [0, 2, 3, 6]


def test_model_exceptions_become_model_error() -> None:
    class Broken(Recorder):
        def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
            raise IndexError("tuple index out of range")

    with pytest.raises(ModelError, match="IndexError"):
        ModelExecutor({}, 0).run(JobKind.CAPTION, Broken(), 1, None, lambda f: None, "j", 60, lambda _at: None)


def test_a_job_alone_reports_its_own_progress_and_a_batch_checkpoints_each_job() -> None:
    class Reporting(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.entered = threading.Event()

        def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
            self.entered.set()
            progress(0.5)  # the job's own callback alone, a no-op in a batch of several
            return super().run_batch(requests, images, progress)

    pipeline = Reporting()
    seen: dict[str, list[float]] = {"first": [], "a": [], "b": []}
    executor = ModelExecutor({JobKind.CAPTION: 4}, max_wait_ms=0)

    def run(request: int, job: str) -> threading.Thread:
        thread = threading.Thread(target=executor.run, args=(JobKind.CAPTION, pipeline, request, None,
                                                              seen[job].append, job, 60, lambda _at: None))
        thread.start()
        return thread

    threads = [run(1, "first")]
    assert pipeline.entered.wait(5)  # the first job holds the model; the next two wait together
    threads += [run(0, "a"), run(2, "b")]
    while executor._queue.qsize() < 2:
        threading.Event().wait(0.01)
    pipeline.gate.set()
    for t in threads:
        t.join()
    assert [sorted(b) for b in pipeline.batches] == [[1], [0, 2]]
    assert seen == {"first": [0.5, 1.0], "a": [1.0], "b": [1.0]}


def test_a_job_whose_key_is_none_runs_alone() -> None:
    class Alone(Recorder):
        def batch_key(self, request: Any) -> None:
            return None

    pipeline = Alone()
    executor = ModelExecutor({JobKind.CAPTION: 8}, max_wait_ms=200)
    threads, results = submit_all(executor, pipeline, [2, 4, 6, 8])
    pipeline.gate.set()
    for t in threads:
        t.join()
    assert [len(b) for b in pipeline.batches] == [1, 1, 1, 1]
    assert all(results[i][1] == 1 for i in results)


def test_canceled_midway_alone_fails_that_job() -> None:
    class Cancels(Recorder):
        def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
            progress(0.5)
            return super().run_batch(requests, images, progress)

    def cancel(fraction: float) -> None:
        raise JobCanceled("canceled")

    pipeline = Cancels()
    pipeline.gate.set()
    with pytest.raises(JobCanceled):
        ModelExecutor({JobKind.CAPTION: 4}, 0).run(JobKind.CAPTION, pipeline, 1, None, cancel, "j", 60,
                                                   lambda _at: None)
    assert pipeline.batches == []


class NotStarted(Exception):
    """What a refused start raises (the runtime's own is private)."""


class Stepper:
    """An unbatchable pipeline of `steps` steps, each a progress checkpoint; records what it ran."""

    model_label = "stepper"

    def __init__(self, steps: int = 5) -> None:
        self.steps = steps
        self.ran: list[tuple[Any, int]] = []  # (request, steps done)
        self.began = threading.Event()

    def batch_key(self, request: Any) -> None:
        return None

    def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
        self.began.set()
        done = 0
        try:
            for step in range(self.steps):
                progress(step / self.steps)
                done += 1
        finally:
            self.ran.append((requests[0], done))
        return [PipelineResult(output={"echo": requests[0]})]


def test_the_model_does_not_wait_for_the_running_transition() -> None:
    pipeline = Stepper()

    def start(_taken_at: str) -> None:  # returns only once the model has begun: it must not be waited for
        assert pipeline.began.wait(5), "the model waited for the start"

    result, _, _ = ModelExecutor({}, 0).run(JobKind.GENERATE, pipeline, 1, None, lambda f: None, "j", 60, start)
    assert result.output == {"echo": 1}


class Quick:
    """An unbatchable pipeline without checkpoints of its own; notes each request it ran."""

    model_label = "quick"

    def __init__(self) -> None:
        self.ran: dict[Any, threading.Event] = {"a": threading.Event(), "b": threading.Event()}

    def batch_key(self, request: Any) -> None:
        return None

    def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
        self.ran[requests[0]].set()
        return [PipelineResult(output={"echo": requests[0]})]


def test_the_model_takes_the_next_job_while_the_last_ones_running_transition_is_on_its_way() -> None:
    pipeline, executor = Quick(), ModelExecutor({}, 0)
    results: dict[str, Any] = {}
    a_starting = threading.Event()

    def slow_start(_taken_at: str) -> None:  # job a's round trip lasts until the model has run job b
        a_starting.set()
        assert pipeline.ran["b"].wait(5), "the model waited for job a's running transition"

    def one(name: str, start: Any) -> None:
        try:
            results[name] = executor.run(JobKind.GENERATE, pipeline, name, None, lambda f: None, name, 60, start)
        except BaseException as exc:  # noqa: BLE001
            results[name] = exc

    first = threading.Thread(target=one, args=("a", slow_start))
    first.start()
    assert a_starting.wait(5)
    second = threading.Thread(target=one, args=("b", lambda _at: None))
    second.start()
    for thread in (first, second):
        thread.join(10)
    assert {name: r[0].output["echo"] for name, r in results.items()} == {"a": "a", "b": "b"}


def test_a_redelivered_job_is_started_before_the_model_takes_it() -> None:
    pipeline = Stepper()
    seen: list[bool] = []

    def start(_taken_at: str) -> None:
        seen.append(pipeline.began.is_set())

    ModelExecutor({}, 0).run(JobKind.GENERATE, pipeline, 1, None, lambda f: None, "j", 60, start, start_first=True)
    assert seen == [False] and pipeline.ran == [(1, 5)]


def test_a_redelivered_job_refused_at_its_start_never_reaches_the_model() -> None:
    pipeline = Stepper()

    def start(_taken_at: str) -> None:
        raise NotStarted("lost its worker on each of its attempts")

    with pytest.raises(NotStarted):
        ModelExecutor({}, 0).run(JobKind.GENERATE, pipeline, 1, None, lambda f: None, "j", 60, start,
                                 start_first=True)
    assert pipeline.ran == []


def test_a_job_refused_at_its_start_stops_at_the_first_checkpoint() -> None:
    pipeline = Stepper()
    progress: list[float] = []

    def start(_taken_at: str) -> None:
        raise NotStarted("canceled while queued")

    with pytest.raises(NotStarted):
        ModelExecutor({}, 0).run(JobKind.GENERATE, pipeline, 1, None, progress.append, "j", 60, start)
    assert pipeline.ran == [(1, 0)] and progress == []


def test_a_job_refused_at_its_start_gets_no_share_of_its_batch() -> None:
    pipeline = Recorder()
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        def start(_taken_at: str) -> None:
            if i == 2:
                raise NotStarted("canceled while queued")
        try:
            results[i] = executor.run(JobKind.CAPTION, pipeline, i * 2, None, lambda f: None, f"job{i}", 60, start)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    executor = ModelExecutor({JobKind.CAPTION: 4}, max_wait_ms=300)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    pipeline.gate.set()
    for t in threads:
        t.join(10)
    assert isinstance(results.pop(2), NotStarted)
    assert {i: r[0].output["echo"] for i, r in results.items()} == {0: 0, 1: 2, 3: 6}


class Finishing(Recorder):
    """A pipeline that leaves each job's post-processing to `finish`, recording the thread it ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.finished_on: dict[Any, str] = {}

    def infer_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[Any]:
        self.gate.wait(5)
        self.batches.append(list(requests))
        return list(requests)

    def finish(self, request: Any, image: Any, output: Any) -> PipelineResult:
        self.finished_on[request] = threading.current_thread().name
        if request == 4:
            raise RuntimeError("post-processing broke")
        return PipelineResult(output={"echo": output})


def test_finish_runs_on_the_jobs_own_threads_and_fails_alone() -> None:
    pipeline = Finishing()
    executor = ModelExecutor({JobKind.CAPTION: 4}, max_wait_ms=300)
    threads, results = submit_all(executor, pipeline, [0, 2, 4, 6, 8])
    time.sleep(0.3)  # the first job holds the model (gate): the others queue up behind it
    pipeline.gate.set()
    for t in threads:
        t.join(10)
    assert max(len(batch) for batch in pipeline.batches) > 1
    assert isinstance(results[2], ModelError) and "post-processing broke" in str(results[2])
    assert {i: results[i][0].output["echo"] for i in (0, 1, 3, 4)} == {0: 0, 1: 2, 3: 6, 4: 8}
    assert len(pipeline.finished_on) == 5 and "visionq-model" not in set(pipeline.finished_on.values())


def test_two_model_threads_run_a_second_batch_while_the_first_is_still_running() -> None:
    """With the models in a process of their own (BATCHES_IN_FLIGHT), the next batch is formed
    and handed over while one runs; each job still gets its own result, once."""
    running = threading.Semaphore(0)
    release = threading.Event()

    class Holding(Recorder):
        def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
            running.release()
            release.wait(5)
            return super().run_batch(requests, images, progress)

    pipeline = Holding()
    pipeline.gate.set()
    executor = ModelExecutor({JobKind.CAPTION: 2}, max_wait_ms=50, threads=2)
    threads, results = submit_all(executor, pipeline, [2, 4, 6, 8])
    assert running.acquire(timeout=5) and running.acquire(timeout=5)  # two batches in at once
    release.set()
    for t in threads:
        t.join()
    assert sorted(r for b in pipeline.batches for r in b) == [2, 4, 6, 8]
    assert [results[i][0].output["echo"] for i in range(4)] == [2, 4, 6, 8]


def test_a_queued_batch_is_taken_when_its_pipeline_starts_it_not_when_it_is_sent() -> None:
    """The model process queues batches: its jobs turn running (their time limit and attempt
    start) when the batch starts there, not while it waits behind the one ahead."""
    go = threading.Event()

    class Queueing(Recorder):
        queues_batches = True

        def infer_batch(self, requests: list[Any], inputs: list[Any], progress: Any, on_start: Any = None) -> list[Any]:
            go.wait(5)  # waiting behind another batch
            on_start()
            return [PipelineResult(output={"echo": r}) for r in requests]

    starts: list[str] = []
    results: list[Any] = []
    executor = ModelExecutor({JobKind.CAPTION: 2}, max_wait_ms=5, threads=2)
    job = threading.Thread(target=lambda: results.append(executor.run(
        JobKind.CAPTION, Queueing(), 2, None, lambda f: None, "job", 60, starts.append)))
    job.start()
    time.sleep(0.3)
    assert starts == []  # sent, not started
    go.set()
    job.join(5)
    assert len(starts) == 1 and results[0][0].output == {"echo": 2}


def test_a_redelivered_job_of_a_queued_pipeline_starts_only_once_the_batch_ahead_has_ended() -> None:
    """A redelivery is started before the model runs it; in the model process's queue it would
    otherwise start (its clock, its attempt) while it waits behind another batch."""
    release = threading.Event()
    starts: list[str] = []

    class Queueing(Recorder):
        queues_batches = True

        def infer_batch(self, requests: list[Any], inputs: list[Any], progress: Any, on_start: Any = None) -> list[Any]:
            if on_start is not None:
                on_start()
            if requests[0] == 2:
                release.wait(5)  # the batch ahead runs on
            return [PipelineResult(output={"echo": r}) for r in requests]

    pipeline = Queueing()
    executor = ModelExecutor({JobKind.CAPTION: 1}, max_wait_ms=5, threads=2)

    def job(request: int, name: str, redelivered: bool) -> threading.Thread:
        thread = threading.Thread(target=lambda: executor.run(
            JobKind.CAPTION, pipeline, request, None, lambda f: None, name, 60, lambda _at: starts.append(name),
            start_first=redelivered))
        thread.start()
        return thread

    ahead = job(2, "ahead", redelivered=False)
    deadline = time.monotonic() + 5
    while starts != ["ahead"] and time.monotonic() < deadline:
        time.sleep(0.01)
    again = job(4, "redelivered", redelivered=True)
    time.sleep(0.3)
    assert starts == ["ahead"]
    release.set()
    ahead.join(5)
    again.join(5)
    assert starts == ["ahead", "redelivered"]
