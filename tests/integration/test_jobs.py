"""End to end: SDK -> Redis -> a real worker process with tiny models -> S3 (moto server)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from producer import Client, InvalidInput
from tasks.kinds import JobKind
from tests.conftest import BUCKET
from tests.support.cli import run_visionq
from tests.support.images import encode, scene
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 60


def s3_bytes(s3: object, uri: str) -> bytes:
    bucket, key = uri[len("s3://"):].split("/", 1)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def check_file(s3: object, ref: dict) -> bytes:
    data = s3_bytes(s3, ref["uri"])
    assert ref["bytes"] == len(data)
    assert ref["sha256"] == hashlib.sha256(data).hexdigest()
    assert ref["url"].startswith("http")
    return data


def test_caption_end_to_end(client: Client, s3: object) -> None:
    job = client.caption(scene(), prompt="a picture of", max_new_tokens=8)
    assert job.status == "queued"
    job.wait(timeout=TIMEOUT)
    record = job.to_dict()
    assert record["status"] == "succeeded", record["error"]
    assert isinstance(record["output"]["text"], str)
    assert record["attempt"] == 1
    assert record["worker"] and record["model"] == "blip" and record["model_id"].endswith("caption")
    assert record["progress"] == 1.0
    assert set(record["metrics"]) >= {"queue_ms", "input_ms", "run_ms", "upload_ms", "total_ms", "batch_size"}
    assert record["input"]["image"].startswith(f"s3://{BUCKET}/svc/inputs/")
    stored = json.loads(s3_bytes(s3, f"s3://{BUCKET}/svc/jobs/{job.id}/result.json"))
    assert stored["status"] == "succeeded" and stored["output"] == record["output"]


def test_segment_with_labels(client: Client, s3: object) -> None:
    image = scene(80, 48)
    job = client.segment(image, labels=["sun", "house"], threshold=0.5).wait(timeout=TIMEOUT)
    assert job.status == "succeeded", job.error
    segments = job.output["segments"]
    assert [s["label"] for s in segments] == ["sun", "house"]
    for n, segment in enumerate(segments):
        assert segment["mask"]["uri"].endswith(f"/jobs/{job.id}/mask-{n}.png")
        mask = Image.open(io.BytesIO(check_file(s3, segment["mask"])))
        assert mask.size == image.size
        assert 0.0 <= segment["area"] <= 1.0
    overlay = Image.open(io.BytesIO(check_file(s3, job.output["overlay"])))
    assert overlay.size == image.size


def test_segment_semantic_classes(client: Client, s3: object) -> None:
    job = client.segment(scene()).wait(timeout=TIMEOUT)
    assert job.status == "succeeded", job.error
    segments = job.output["segments"]
    assert segments, "semantic segmentation returns the classes present"
    assert sum(s["area"] for s in segments) == pytest.approx(1.0, abs=1e-4)
    for segment in segments:
        check_file(s3, segment["mask"])


def test_generate_is_reproducible_for_a_seed(client: Client, s3: object) -> None:
    first = client.generate("a watercolor fox", width=64, height=64, steps=3, seed=7, num_images=2)
    second = client.generate("a watercolor fox", width=64, height=64, steps=3, seed=7, num_images=2)
    other = client.generate("a watercolor fox", width=64, height=64, steps=3, seed=100)
    alone = client.generate("a watercolor fox", width=64, height=64, steps=3, seed=8)
    for job in (first, second, other, alone):
        job.wait(timeout=TIMEOUT)
        assert job.status == "succeeded", job.error
    assert first.output["seed"] == 7
    digests = [[img["sha256"] for img in job.output["images"]] for job in (first, second, other)]
    assert digests[0] == digests[1]
    assert len(set(digests[0])) == 2
    assert digests[2][0] not in digests[0]
    # image i uses seed + i: the second image of seed 7 is the only image of seed 8
    # (up to rounding: batched arithmetic may put a few pixels one level apart)
    pixels = [np.asarray(Image.open(io.BytesIO(s3_bytes(s3, ref["uri"]))), dtype=int)
              for ref in (first.output["images"][1], alone.output["images"][0])]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1
    image = Image.open(io.BytesIO(check_file(s3, first.output["images"][0])))
    assert image.size == (64, 64)
    assert first.progress == 1.0


def test_generate_without_seed_reports_the_seed_it_drew(client: Client) -> None:
    job = client.generate("a fox", width=64, height=64, steps=1).wait(timeout=TIMEOUT)
    assert job.status == "succeeded", job.error
    assert isinstance(job.output["seed"], int)
    again = client.generate("a fox", width=64, height=64, steps=1, seed=job.output["seed"]).wait(timeout=TIMEOUT)
    assert again.output["images"][0]["sha256"] == job.output["images"][0]["sha256"]


def test_idempotency_key_submits_once(client: Client) -> None:
    first = client.caption(scene(seed=3), idempotency_key="order-42")
    second = client.caption(scene(seed=3), idempotency_key="order-42")
    assert first.id == second.id
    assert second.wait(timeout=TIMEOUT).status == "succeeded"
    assert second.to_dict()["attempt"] == 1


def test_idempotency_key_reused_with_another_request_is_a_conflict_not_the_other_job(
    client: Client, service_env: dict[str, str],
) -> None:
    """As the gateway's 409: a caller is never handed a job it did not ask for."""
    from producer import Conflict

    held = client.generate("a fox", width=64, height=64, steps=1, idempotency_key="order-43")
    with pytest.raises(Conflict) as refused:
        client.generate("another fox", width=64, height=64, steps=1, idempotency_key="order-43")
    assert refused.value.code == "conflict" and held.id in refused.value.message
    with pytest.raises(Conflict):
        client.caption(scene(seed=3), idempotency_key="order-43")  # another kind too
    results = client.submit_many([
        {"kind": "generate", "input": {"prompt": "a fox", "width": 64, "height": 64, "steps": 1},
         "idempotency_key": "order-43"},
        {"kind": "generate", "input": {"prompt": "a cat", "width": 64, "height": 64, "steps": 1},
         "idempotency_key": "order-43"},
    ])
    assert results[0].id == held.id and isinstance(results[1], Conflict)
    cli = run_visionq("submit", "generate", "a cat", "--width", "64", "--height", "64", "--steps", "1",
                      "--idempotency-key", "order-43", env=service_env)
    assert cli.returncode == 2 and f"was used for job {held.id} with another request" in cli.stderr
    assert held.wait(timeout=TIMEOUT).status == "succeeded", held.error


def test_input_forms(client: Client, tmp_path, s3: object) -> None:
    from producer.client import inline_image

    path = tmp_path / "cat.jpg"
    path.write_bytes(encode(scene(seed=5), "JPEG"))
    data = encode(scene(seed=6), "WEBP")
    jobs = [
        client.caption(str(path)),
        client.caption(path.read_bytes()),
        client.caption(data),
        client.caption(inline_image(encode(scene(seed=7)))),
    ]
    for job in jobs:
        assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error
    assert jobs[0].to_dict()["input"]["image"].endswith(".jpg")
    assert jobs[2].to_dict()["input"]["image"].endswith(".webp")
    assert jobs[3].to_dict()["input"]["image"].startswith("inline:sha256:")
    # the same bytes are stored once, under their digest
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert jobs[0].to_dict()["input"]["image"] == jobs[1].to_dict()["input"]["image"]
    assert digest in jobs[0].to_dict()["input"]["image"]


def test_bad_parameters_are_refused_before_enqueue(client: Client, redis_client) -> None:
    from tasks.kinds import Priority, queue_list_key

    queue = queue_list_key(JobKind.GENERATE, Priority.NORMAL, client.settings.redis_prefix)
    before = redis_client.llen(queue)
    with pytest.raises(InvalidInput, match="width 4000 exceeds the maximum 2048"):
        client.generate("a fox", width=4000)
    with pytest.raises(ValueError, match="labels must be a list"):
        client.segment(scene(), labels="car")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="neither a URI nor an existing file"):
        client.caption("/no/such/file.png")
    with pytest.raises(InvalidInput, match="GIF images are not accepted, only JPEG, PNG or WebP"):
        client.caption(b"GIF89a....")
    for option in ("kind", "max_tokens"):  # the kind is the method's; a misspelt option is named
        with pytest.raises(TypeError, match=f"caption\\(\\) got an unexpected keyword argument '{option}'"):
            client.caption(scene(), **{option: 1})
    assert redis_client.llen(queue) == before


@pytest.fixture
def gated(service_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Client, Path, Path]]:
    """A worker (one slot) whose model runs `gate:NAME` jobs until the test creates
    gates/NAME: (its client, the gates folder, the file logging finished runs)."""
    from producer.launch import WorkerProcess, visionq_argv, wait_all_ready
    from tasks.settings import Settings

    env = {**os.environ, **service_env, "VISIONQ_REDIS_PREFIX": f"vqgate-{uuid.uuid4().hex[:6]}"}
    gates, runs = tmp_path / "gates", tmp_path / "runs.txt"
    gates.mkdir()
    worker = WorkerProcess(
        visionq_argv("--cost-ms", "10", "--gates", str(gates), "--runs-file", str(runs),
                     module="tests.support.standin_worker"),
        env=env, log_path=tmp_path / "worker.log", redis_url=env["VISIONQ_REDIS_URL"],
        prefix=env["VISIONQ_REDIS_PREFIX"], cwd=Path(__file__).resolve().parents[2],
    ).start()
    try:
        wait_all_ready([worker], 60)
        yield Client(settings=Settings.from_env(env)), gates, runs
    finally:
        worker.stop()


def test_cancel_queued_job_never_runs(gated: tuple[Client, Path, Path]) -> None:
    client, gates, runs = gated
    blocker = client.generate("gate:blocker")
    wait_until(lambda: blocker.refresh().status == "running", what="blocker running")
    queued = client.generate("canceled-while-queued")  # one slot, taken: it stays queued
    assert client.cancel(queued.id).status == "canceled"
    (gates / "blocker").touch()
    assert blocker.wait(timeout=TIMEOUT).status == "succeeded"
    record = queued.refresh().to_dict()
    assert record["status"] == "canceled"
    assert record["error"]["code"] == "canceled"
    assert record["started_at"] is None and record["worker"] is None and record["attempt"] == 0
    # the worker took and dropped the message: a later job runs normally
    assert client.generate("after").wait(timeout=TIMEOUT).status == "succeeded"
    assert "canceled-while-queued" not in runs.read_text().split()


def test_cancel_running_generation_stops_and_publishes_nothing(gated: tuple[Client, Path, Path], s3: object) -> None:
    client, _gates, runs = gated
    job = client.generate("gate:never")
    wait_until(lambda: job.refresh().progress > 0.0 or job.is_final)
    assert job.status == "running", job.to_dict()
    client.cancel(job.id)
    job.wait(timeout=TIMEOUT)
    assert job.status == "canceled"
    assert not runs.exists() or "gate:never" not in runs.read_text().split()
    assert job.output is None
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"svc/jobs/{job.id}/")
    names = [o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])]
    assert not [n for n in names if n.startswith("output-")]
    assert job.progress < 1.0


def test_models_are_loaded_once_per_worker(client: Client, worker) -> None:
    for seed in range(3):
        assert client.caption(scene(seed=seed)).wait(timeout=TIMEOUT).status == "succeeded"
    # jobs_done reaches Redis with the next beat (at most a second later)
    wait_until(lambda: worker.heartbeat()["jobs_done"] >= 3, what="jobs counted")
    assert worker.heartbeat()["model_loads"] == 3  # caption, segment, generate: at start, never per job
