"""A worker's /metrics counts every job it ends, once, with every duration."""
from __future__ import annotations

import pytest

from tests.observability.conftest import metric_names, scrape
from tests.support.images import encode, scene

pytestmark = pytest.mark.integration

DURATION_HISTOGRAMS = ("visionq_job_queue_seconds", "visionq_job_run_seconds",
                       "visionq_job_encode_seconds", "visionq_job_upload_seconds")


def _total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name)


def test_after_n_jobs_the_counters_and_every_histogram_count_n(obs_client: object, metrics_url: str) -> None:
    n = 5
    before = scrape(metrics_url)
    jobs = [obs_client.segment(encode(scene(seed=i)), labels=["cat"]) for i in range(n)]  # type: ignore[attr-defined]
    for job in jobs:
        assert job.wait(timeout=120).status == "succeeded", job.to_dict()
    after = scrape(metrics_url)

    assert _total(after, "visionq_jobs_total") - _total(before, "visionq_jobs_total") == n
    key = 'visionq_jobs_total{error_code="none",kind="segment",model="clipseg",status="succeeded"}'
    assert after[key] - before.get(key, 0) == n
    for histogram in (*DURATION_HISTOGRAMS, "visionq_job_batch_size"):
        count = f'{histogram}_count{{kind="segment"}}'
        assert after[count] - before.get(count, 0) == n, histogram


def test_a_failed_job_is_counted_with_its_error_code(obs_client: object, metrics_url: str) -> None:
    before = scrape(metrics_url)
    job = obs_client.caption(b"\x89PNG\r\n\x1a\n" + b"not a png")  # type: ignore[attr-defined]
    assert job.wait(timeout=120).error["code"] == "invalid_input"
    after = scrape(metrics_url)
    key = 'visionq_jobs_total{error_code="invalid_input",kind="caption",model="blip",status="failed"}'
    assert after[key] - before.get(key, 0) == 1


def test_the_worker_reports_its_state_model_load_and_gpu_memory_families(metrics_url: str) -> None:
    samples = scrape(metrics_url)
    states = {k: v for k, v in samples.items() if k.startswith("visionq_worker_state{")}
    assert sum(states.values()) == 1 and states['visionq_worker_state{state="ready"}'] in (0, 1)
    assert samples["visionq_model_load_seconds{}"] > 0
    names = metric_names(metrics_url)
    # Samples only on a CUDA device; the families are always declared.
    assert {"visionq_gpu_memory_used_bytes", "visionq_gpu_memory_reserved_bytes", "visionq_jobs_in_progress"} <= names


def _two_free_ports() -> int:
    """A port P with P + 1 free too (checked by binding both; a fleet's children take P + index)."""
    import socket

    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port


def test_each_child_of_a_fleet_serves_its_own_metrics_port(obs_env: dict[str, str], tmp_path: object) -> None:
    import os
    import signal
    import subprocess
    import sys
    import uuid

    import httpx

    from producer.client import Client
    from producer.launch import child_env
    from tasks.settings import Settings
    from tests.support.images import encode, scene
    from tests.support.waiting import wait_until
    from tests.support.workers import REPO

    env = {**obs_env, "VISIONQ_REDIS_PREFIX": f"vqfleet-{uuid.uuid4().hex[:6]}"}
    port = _two_free_ports()
    log = tmp_path / "fleet.log"  # type: ignore[operator]
    with open(log, "wb") as out:
        fleet = subprocess.Popen(
            [sys.executable, "-P", "-m", "worker", "worker", "--device", "cpu", "--replicas", "2", "--kinds", "caption",
             "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
            env=child_env({**os.environ, **env}), stdout=out, stderr=out, cwd=REPO)
    urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(2)]

    def ready(url: str) -> bool:
        assert fleet.poll() is None, log.read_text()[-3000:]
        try:
            return scrape(url).get('visionq_worker_state{state="ready"}') == 1.0
        except httpx.HTTPError:
            return False
    try:
        wait_until(lambda: all(ready(url) for url in urls), 180, "both children serving /metrics, ready")
        client = Client(settings=Settings.from_env(env))
        jobs = [client.caption(encode(scene(seed=i))) for i in range(4)]
        for job in jobs:
            assert job.wait(timeout=120).status == "succeeded", job.error
        assert sum(_total(scrape(url), "visionq_jobs_total") for url in urls) == 4
    finally:
        fleet.send_signal(signal.SIGTERM)  # the supervisor drains its children
        fleet.wait(timeout=60)
