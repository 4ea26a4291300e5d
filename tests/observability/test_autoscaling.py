"""The KEDA recipes and the Grafana dashboard: valid manifests, queries that read the true backlog
on a real Prometheus (Debian's `prometheus`) scraping a live worker and gateway, and no metric
name that a live scrape lacks."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from producer.redis_server import free_port
from tasks.models import default_model
from tests.observability.conftest import metric_names
from tests.support.waiting import wait_until
from tests.support.workers import REPO

DOCKER = REPO / "docker"
# What the recipe scales: each kind's default model, and one routed model as the pattern to copy.
TARGETS = ("caption/blip", "segment/clipseg", "generate/sd", "caption/vit-gpt2")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _scaled_objects() -> dict[str, dict[str, Any]]:
    """"kind/model" -> its ScaledObject."""
    return {f'{doc["metadata"]["labels"]["visionq/kind"]}/{doc["metadata"]["labels"]["visionq/model"]}': doc
            for doc in _documents(DOCKER / "keda" / "scaledobjects.yaml")}


def _keda_queries() -> dict[str, str]:
    return {target: doc["spec"]["triggers"][0]["metadata"]["query"] for target, doc in _scaled_objects().items()}


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "visionq.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_keda_manifests_match_the_scaledobject_and_deployment_schemas() -> None:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schemas = DOCKER / "keda" / "schemas"
    kubernetes = json.loads((schemas / "kubernetes-minimal.json").read_text())
    registry = Registry().with_resource("kubernetes-minimal.json", Resource.from_contents(kubernetes))
    scaled_object = Draft202012Validator(json.loads((schemas / "scaledobject.keda.sh-v1alpha1.json").read_text()),
                                         registry=registry)
    deployment = Draft202012Validator(kubernetes, registry=registry)
    deployments = {doc["metadata"]["name"]: doc for doc in _documents(DOCKER / "keda" / "workers.yaml")}
    for doc in deployments.values():
        deployment.validate(doc)
    objects = _scaled_objects()
    assert sorted(objects) == sorted(TARGETS)
    for name, doc in objects.items():
        scaled_object.validate(doc)
        target = deployments[doc["spec"]["scaleTargetRef"]["name"]]  # scales a Deployment of the recipe
        args = target["spec"]["template"]["spec"]["containers"][0]["args"]
        kind, model = name.split("/")
        serves = f"{kind}/{args[args.index('--serve') + 1].split('/')[1]}" if "--serve" in args else \
            f"{args[args.index('--kinds') + 1]}/{default_model(kind)}"
        assert serves == name and "--metrics-port" in args  # the Deployment serves exactly what is counted
        assert doc["spec"]["minReplicaCount"] == 0  # scale to zero
    broken = json.loads(json.dumps(objects["caption/blip"]))
    broken["spec"]["triggers"][0]["metadata"]["treshold"] = broken["spec"]["triggers"][0]["metadata"].pop("threshold")
    assert list(scaled_object.iter_errors(broken))  # the schema catches a misspelt field


@pytest.fixture(scope="module")
def prometheus(metrics_url: str, gateway: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is needed: apt-get install -y --no-install-recommends prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    worker_target = metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "visionq-workers", "static_configs": [{"targets": [worker_target]}]},
            {"job_name": "visionq-gateway", "static_configs": [{"targets": [gateway.removeprefix("http://")]}]},
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(folder / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        def both_up() -> bool:
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
            try:
                answer = httpx.get(f"{url}/api/v1/query", params={"query": "sum(up)"}, timeout=10)
            except httpx.HTTPError:
                return False
            if answer.status_code != 200:  # 503 while its storage starts
                return False
            result = answer.json()["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) == 2.0
        wait_until(both_up, 60, "Prometheus scraping the worker and the gateway")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)  # by the pid we started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _query(url: str, promql: str) -> float | None:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.integration
def test_the_keda_queries_read_the_true_backlog_on_a_real_prometheus(
    prometheus: str, obs_client: Any, obs_worker: Any,
) -> None:
    from tests.support.images import encode, scene

    queries = _keda_queries()
    before = {kind: _query(prometheus, q) for kind, q in queries.items()}
    assert before == {target: 0.0 for target in TARGETS}  # an empty deployment: 0, not "no data"
    queued = [obs_client.generate(f"backlog {i}", priority=p, queue_timeout_s=600)
              for i, p in enumerate(["high", "normal", "normal", "low"])]  # every priority counts
    routed = obs_client.caption(encode(scene()), model="vit-gpt2", queue_timeout_s=600)  # no worker serves it
    try:
        wait_until(lambda: _query(prometheus, queries["generate/sd"]) == len(queued), 60,
                   "the generate backlog in Prometheus")
        wait_until(lambda: _query(prometheus, queries["caption/vit-gpt2"]) == 1.0, 60, "the routed model's backlog")
        for target in ("caption/blip", "segment/clipseg"):  # the routed job counts for its own model only
            assert _query(prometheus, queries[target]) == 0.0
        assert routed.refresh().status == "queued"
    finally:  # purge (not cancel): the messages leave the queue too
        from tasks.expiry import QueueEnds
        from tasks.kinds import JobKind

        for kind in (JobKind.GENERATE, JobKind.CAPTION):
            QueueEnds(obs_client.store).purge(kind, "test cleanup")


@pytest.mark.integration
def test_every_metric_the_dashboard_and_the_recipes_name_is_in_a_live_scrape(
    metrics_url: str, gateway: str, obs_client: Any,
) -> None:
    from tests.support.images import encode, scene

    assert obs_client.caption(encode(scene())).wait(timeout=120).status == "succeeded"  # histograms have samples
    live = metric_names(metrics_url) | metric_names(f"{gateway}/metrics")
    named = set()
    for expr in [*_dashboard_queries(), *_keda_queries().values()]:
        named |= set(re.findall(r"\bvisionq_[a-z_]+", expr))
    assert len(named) >= 12
    assert sorted(named - live) == []
