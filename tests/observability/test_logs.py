"""VISIONQ_LOG_FORMAT=json: one JSON object per line, a line per final job, and no secret anywhere."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import WEBHOOK_SECRET
from tests.observability.conftest import AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, REDIS_PASSWORD
from tests.support.images import encode, scene
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

URL_TOKEN = "tok-9f8e7d6c5b4a"


@pytest.fixture
def deliverer(obs_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(obs_env, tmp_path, ["webhooks", "--concurrency", "2"]) as process:
        yield process


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line in {path.name}: {line[:300]!r}") from None
    return parsed


def test_final_jobs_log_one_json_line_each_and_secrets_never_appear(
    obs_client: Any, obs_worker: WorkerProcess, deliverer: WorkerProcess,
) -> None:
    webhook = f"http://localhost:9/hook?token={URL_TOKEN}"  # nobody listens: attempts fail and are logged
    ok = obs_client.caption(encode(scene()), webhook=webhook)
    bad = obs_client.caption(b"\x89PNG\r\n\x1a\n" + b"truncated", webhook=webhook)
    assert ok.wait(timeout=120).status == "succeeded"
    assert bad.wait(timeout=120).status == "failed"

    def finals() -> dict[str, dict[str, Any]]:
        return {line["job_id"]: line for line in _json_lines(obs_worker.log_path) if "job_id" in line}
    wait_until(lambda: {ok.id, bad.id} <= finals().keys(), 30, "both final lines written")
    line = finals()[ok.id]
    assert (line["kind"], line["status"], line["error_code"]) == ("caption", "succeeded", None)
    assert line["run_ms"] > 0 and line["queue_ms"] >= 0 and "total_ms" in line
    assert (finals()[bad.id]["status"], finals()[bad.id]["error_code"]) == ("failed", "invalid_input")
    wait_until(lambda: "webhook" in deliverer.log_path.read_text(), 30, "the delivery worker logging an attempt")

    for path in (obs_worker.log_path, deliverer.log_path):
        text = path.read_text()
        _json_lines(path)  # every line of both processes is a JSON object
        for secret in (WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), REDIS_PASSWORD,
                       AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, URL_TOKEN):
            assert secret not in text, f"{secret[:8]}... logged in {path.name}"
