"""VISIONQ_MODEL_PROCESS=true: a real worker whose weights live in a model process of its own
(worker/model_process.py). Every kind gives the same output as the in-process worker (the
session's `worker`) on the same input, bad input still fails alone and quickly, a running
generation is canceled midway, and a model process that dies ends its worker (exit 70), whose
jobs the next worker runs at once."""
from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from producer.client import Client
from tasks.errors import ErrorCode
from tasks.settings import Settings
from tests.support.images import scene
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.model_process import EXIT_MODEL_PROCESS_LOST

pytestmark = pytest.mark.integration
TIMEOUT = 120


@pytest.fixture(scope="module")
def split_env(service_env: dict[str, str]) -> dict[str, str]:
    """A deployment of its own (key prefix): only this module's worker takes its jobs."""
    return {**service_env, "VISIONQ_REDIS_PREFIX": f"vqsplit-{uuid.uuid4().hex[:8]}", "VISIONQ_MODEL_PROCESS": "true"}


@pytest.fixture(scope="module")
def split_worker(split_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with WorkerProcess(split_env, tmp_path_factory.mktemp("split-worker")) as process:
        yield process


@pytest.fixture
def split_client(split_env: dict[str, str], split_worker: WorkerProcess) -> Client:
    return Client(settings=Settings.from_env(split_env))


def model_process_of(worker: WorkerProcess) -> int:
    """The pid of the worker's one child that is not a multiprocessing helper: its model process."""
    children = []
    for task in Path(f"/proc/{worker.pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    named = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
    spawned = [pid for pid, cmdline in named.items() if b"spawn_main" in cmdline]
    assert len(spawned) == 1, named
    return spawned[0]


def outputs(client: Client, seed: int) -> list[dict]:
    """One job of every kind (segment with labels and without) on the same inputs, succeeded."""
    jobs = [
        client.caption(scene(seed=seed), max_new_tokens=6),
        client.caption(scene(seed=seed), prompt="a photo of", max_new_tokens=6),
        client.segment(scene(seed=seed), labels=["sky", "a red car"]),
        client.segment(scene(seed=seed)),
        client.generate("a watercolor fox", width=64, height=64, steps=2, seed=seed),
    ]
    for job in jobs:
        assert job.wait(timeout=TIMEOUT).status == "succeeded", job.to_dict()
    return [job.output for job in jobs]


def comparable(output: dict) -> dict:
    """An output without what names its own job (file keys, URLs): texts, labels, areas, seeds."""
    if "text" in output:
        return output
    if "segments" in output:
        return {"segments": [{"label": s["label"], "area": s["area"]} for s in output["segments"]]}
    return {"seed": output["seed"], "images": [image["sha256"] for image in output["images"]]}


def test_every_kind_gives_what_the_in_process_worker_gives(split_client: Client, client: Client) -> None:
    split, together = outputs(split_client, seed=7), outputs(client, seed=7)
    assert [comparable(o) for o in split] == [comparable(o) for o in together]


def test_the_weights_live_in_the_model_process_which_ignores_a_group_sigterm(
    split_client: Client, split_worker: WorkerProcess,
) -> None:
    model_process = model_process_of(split_worker)
    # A supervisor may signal the whole process group; the worker drains, the model process serves on.
    os.kill(model_process, signal.SIGTERM)
    assert split_client.caption(scene(seed=1)).wait(timeout=TIMEOUT).status == "succeeded"
    assert model_process_of(split_worker) == model_process
    beat = split_worker.heartbeat()
    assert beat["model_loads"] == 3  # counted once, where the weights loaded
    memory = beat["memory_mb"]  # the worker's resident memory counts its model process's too
    assert memory["model_process_rss"] > 0 and memory["rss"] > memory["model_process_rss"]


def test_bad_input_fails_alone_before_the_model(split_client: Client) -> None:
    too_long = " ".join(["sky"] * 20)  # under the 100-character limit, over the tiny text encoder's 16 positions
    bad = split_client.segment(scene(seed=2), labels=["sun", too_long])
    good = split_client.segment(scene(seed=2), labels=["sun"])
    assert bad.wait(timeout=TIMEOUT).status == "failed"
    assert bad.error["code"] == ErrorCode.INVALID_INPUT.value and "labels[1]" in bad.error["message"]
    assert good.wait(timeout=TIMEOUT).status == "succeeded", good.to_dict()


def test_a_running_generation_is_canceled_midway(split_client: Client) -> None:
    job = split_client.generate("a long one", width=64, height=64, steps=50, seed=3)
    wait_until(lambda: job.refresh().progress > 0.0 or job.is_final, what="generation under way")
    split_client.cancel(job.id)
    assert job.wait(timeout=TIMEOUT).status == "canceled", job.to_dict()
    assert job.progress < 1.0 and job.output is None
    after = split_client.caption(scene(seed=4))
    assert after.wait(timeout=TIMEOUT).status == "succeeded"  # the model process serves on


# Last: it ends the module's worker. A kill: with the fault suite (-m faults).
@pytest.mark.faults
def test_a_model_process_that_dies_ends_its_worker_which_gives_its_jobs_back(
    split_client: Client, split_worker: WorkerProcess, split_env: dict[str, str], tmp_path: Path,
) -> None:
    """Exit 70, and the messages the worker held are delivered again at once: the next worker
    runs them though the visibility timeout is an hour here (worker/leases.py give_back_all)."""
    jobs = [split_client.generate("cut short", width=128, height=128, steps=100, seed=seed) for seed in range(6)]
    wait_until(lambda: jobs[0].refresh().progress > 0.0, what="the first generation under way")
    os.kill(model_process_of(split_worker), signal.SIGKILL)
    wait_until(lambda: split_worker.process.poll() is not None, timeout_s=30, what="the worker's exit")
    assert split_worker.process.returncode == EXIT_MODEL_PROCESS_LOST
    assert Settings.from_env(split_env).visibility_timeout_s >= 3600
    with WorkerProcess(split_env, tmp_path):
        for job in jobs:
            assert job.wait(timeout=TIMEOUT).status == "succeeded", job.to_dict()
