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
