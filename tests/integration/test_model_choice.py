"""Several models per kind, chosen per job (issue 13): one real worker serves two caption
models; each job names one and the caption's words prove which ran (the tiny captioners speak
disjoint vocabularies). A model no worker loaded waits on its own queue, an unknown one fails
at submit, and a set of models that does not fit the memory budget is refused at start."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from producer.client import Client
from producer.gateway.keys import NewKey
from tasks.errors import InvalidInput
from tasks.served_models import registered_models
from tasks.settings import Settings
from tests.support.cli import run_visionq
from tests.support.gateway import GatewayProcess
from tests.support.images import scene
from tests.support.workers import WorkerProcess
from worker.model_memory import MIB, weights_bytes
from worker.pipelines.base import ModelSpec
from worker.tiny_captioners import BLIP_WORDS, VIT_GPT2_WORDS

pytestmark = pytest.mark.integration
TIMEOUT = 120
TWO_CAPTIONERS = "caption/blip,caption/vit-gpt2"


@pytest.fixture(scope="module")
def choice_env(service_env: dict[str, str]) -> dict[str, str]:
    """A deployment of its own (key prefix): its queues hold only this module's jobs."""
    return {**service_env, "VISIONQ_REDIS_PREFIX": f"vqchoice-{uuid.uuid4().hex[:8]}"}


@pytest.fixture(scope="module")
def two_model_worker(choice_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with WorkerProcess(choice_env, tmp_path_factory.mktemp("choice-worker"),
                       ["worker", "--device", "cpu", "--serve", TWO_CAPTIONERS]) as process:
        yield process


@pytest.fixture
def choice_client(choice_env: dict[str, str], two_model_worker: WorkerProcess) -> Client:
    return Client(settings=Settings.from_env(choice_env))


def words_of(job) -> set[str]:
    said = set(job.output["text"].split())
    assert said, job.to_dict()
    return said


def test_one_worker_serves_two_caption_models_chosen_per_job(choice_client: Client, tiny_models: Path) -> None:
    default = choice_client.caption(scene(seed=1), max_new_tokens=6)
    gpt2 = choice_client.caption(scene(seed=2), max_new_tokens=6, model="vit-gpt2")
    blip = choice_client.caption(scene(seed=3), max_new_tokens=6, model="caption/blip")  # kind/name is accepted too
    for job in (default, gpt2, blip):
        job.wait(timeout=TIMEOUT)
        assert job.status == "succeeded", job.to_dict()
    # The output proves which model ran; the record says the same.
    assert words_of(gpt2) <= set(VIT_GPT2_WORDS)
    assert words_of(default) <= set(BLIP_WORDS) and words_of(blip) <= set(BLIP_WORDS)
    assert gpt2.to_dict()["model"] == "vit-gpt2"
    assert gpt2.to_dict()["model_id"] == str(tiny_models / "caption-vit-gpt2")
    assert default.to_dict()["model"] == blip.to_dict()["model"] == "blip"
    assert default.to_dict()["model_id"] == str(tiny_models / "caption")


def test_a_default_worker_serves_jobs_naming_segments_semantic_default(client: Client, tiny_models: Path) -> None:
    """docs/models.md: `segment/segformer` is segment's default without labels, held by the
    default pipeline: a job naming it runs on a default worker instead of waiting for one that
    loaded it alone. Given labels, it is refused at submit, as such a worker would refuse it; a
    model that needs labels (owlv2-sam) is refused without them."""
    named = client.segment(scene(seed=5), model="segformer")
    assert named.wait(timeout=TIMEOUT).status == "succeeded", named.to_dict()
    assert (named.to_dict()["model"], named.to_dict()["model_id"]) == ("segformer", str(tiny_models / "segment-semantic"))
    assert named.output["segments"] and named.output["overlay"]
    with pytest.raises(InvalidInput, match="segment model 'segformer' takes no labels"):
        client.segment(scene(seed=6), labels=["sun"], model="segment/segformer")
    with pytest.raises(InvalidInput, match="segment model 'owlv2-sam' needs labels"):
        client.segment(scene(seed=6), model="owlv2-sam")
    [refused] = client.submit_many([{"kind": "segment", "input": {"image": "s3://b/k.png"}, "model": "owlv2-sam"}])
    assert isinstance(refused, InvalidInput)


def test_a_model_no_worker_loaded_waits_on_its_own_queue_until_its_deadline(
    choice_client: Client, choice_env: dict[str, str],
) -> None:
    waiting = choice_client.caption(scene(seed=4), model="vlm", queue_timeout_s=600)
    # The worker is idle and consumes the default's queue and vit-gpt2's: a job behind the
    # waiting one on those queues is done while the vlm job is still untouched.
    after = choice_client.caption(scene(seed=5), max_new_tokens=4)
    after.wait(timeout=TIMEOUT)
    assert after.status == "succeeded"
    assert waiting.refresh().status == "queued" and waiting.to_dict()["started_at"] is None
    depths = json.loads(run_visionq("queues", "--json", env=choice_env).stdout)
    assert depths["caption"]["models"]["vlm"]["total"] == 1
    assert depths["caption"]["models"]["blip"]["total"] == 0
    assert (depths["caption"]["models"]["vlm"]["live_workers"], depths["caption"]["models"]["blip"]["live_workers"]) \
        == (0, 1)
    assert depths["caption"]["total"] == 1  # the kind's total counts every model's queue
    text = run_visionq("queues", env=choice_env).stdout
    assert "vlm" in text and "0 live workers" in text
    choice_client.cancel(waiting.id)
    # A known model with no live worker expires by its deadline, like any job (the worker's expirer).
    expiring = choice_client.caption(scene(seed=6), model="vlm", queue_timeout_s=1)
    expiring.wait(timeout=TIMEOUT)
    assert expiring.status == "failed" and expiring.error["code"] == "expired"
    assert "caption/vlm" in expiring.error["message"]


def test_an_unknown_model_fails_at_submit_in_the_sdk_and_the_cli(choice_client: Client, choice_env: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match=r"model 'nope' is not served for caption jobs; known caption models: "
                                           r"blip, vit-gpt2, vlm"):
        choice_client.caption(scene(), model="nope")
    with pytest.raises(InvalidInput, match="is not a caption model"):
        choice_client.caption(scene(), model="segment/clipseg")
    image = Path(choice_env["VISIONQ_MODELS_DIR"]).parent / "choice-input.png"
    scene().save(image)
    refused = run_visionq("submit", "caption", str(image), "--model", "nope", env=choice_env)
    assert refused.returncode == 2
    assert "model 'nope' is not served for caption jobs" in refused.stderr
    accepted = run_visionq("submit", "caption", str(image), "--model", "vit-gpt2", "--wait", "--json",
                           "--timeout", str(TIMEOUT), env=choice_env)
    assert accepted.returncode == 0, accepted.stderr
    record = json.loads(accepted.stdout)
    assert record["model"] == "vit-gpt2" and set(record["output"]["text"].split()) <= set(VIT_GPT2_WORDS)


def test_workers_show_each_model_and_its_weights_memory(
    choice_env: dict[str, str], two_model_worker: WorkerProcess, tiny_models: Path,
) -> None:
    workers = json.loads(run_visionq("workers", "--json", env=choice_env).stdout)
    [mine] = [w for w in workers if w["pid"] == two_model_worker.pid]
    assert set(mine["models"]) == {"caption/blip", "caption/vit-gpt2"}
    for name, folder in (("caption/blip", "caption"), ("caption/vit-gpt2", "caption-vit-gpt2")):
        expected = round(weights_bytes(ModelSpec(str(tiny_models / folder)), 4) / MIB, 1)  # fp32 on the CPU
        assert mine["models"][name]["weights_mb"] == expected > 0
    assert mine["models"]["caption/vit-gpt2"]["queue"] == "visionq.caption.vit-gpt2"
    assert mine["models"]["caption/blip"]["queue"] == "visionq.caption"
    text = run_visionq("workers", env=choice_env).stdout
    assert "caption/vit-gpt2" in text and "weights_mb=" in text
    # The registry outlives the worker's heartbeat: both names stay known to submitters.
    client = Client(settings=Settings.from_env(choice_env))
    registry = registered_models(client.store.redis, choice_env["VISIONQ_REDIS_PREFIX"])
    assert set(registry) >= {"caption/blip", "caption/vit-gpt2"}


def test_a_worker_refuses_at_start_a_set_of_models_that_does_not_fit(service_env: dict[str, str]) -> None:
    env = {**service_env, "VISIONQ_REDIS_PREFIX": f"vqfit-{uuid.uuid4().hex[:8]}", "VISIONQ_MEMORY_BUDGET_MB": "0.01"}
    refused = run_visionq("worker", "--device", "cpu", "--serve", TWO_CAPTIONERS, env=env, timeout=TIMEOUT)
    assert refused.returncode == 1
    assert "more than VISIONQ_MEMORY_BUDGET_MB 0.01 allows" in refused.stderr
    assert "caption/blip" in refused.stderr and "caption/vit-gpt2" in refused.stderr
    assert "serve fewer models on this worker or raise the budget" in refused.stderr


def test_the_gateway_takes_a_model_beside_the_input(gateway: GatewayProcess, acme: NewKey) -> None:
    body = {"kind": "caption", "input": {"image": "https://example.com/cat.png"}}
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {acme.key}"}, timeout=90) as http:
        unknown = http.post("/v1/jobs", json={**body, "model": "nope"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "invalid_input"
        assert "known caption models: blip, vit-gpt2, vlm" in unknown.json()["error"]["message"]
        chosen = http.post("/v1/jobs", json={**body, "model": "vit-gpt2", "queue_timeout_s": 600})
        assert chosen.status_code == 201, chosen.text
        assert chosen.json()["model"] == "vit-gpt2"
        http.post(f"/v1/jobs/{chosen.json()['id']}/cancel")  # no worker of this module serves it
        unlabelled = http.post("/v1/jobs", json={"kind": "segment", "model": "owlv2-sam", "input": body["input"]})
        assert unlabelled.status_code == 400 and "needs labels" in unlabelled.json()["error"]["message"]


def test_the_gateway_submitter_checks_the_model_and_queues_on_its_queue(
    choice_env: dict[str, str], two_model_worker: WorkerProcess,
) -> None:
    """The gateway's own submit path in process (the HTTP round trip is the test above)."""
    from producer.gateway.keys import ApiKey
    from producer.gateway.services import Services
    from producer.gateway.submit import Submitter

    settings = Settings.from_env(choice_env)
    submitter = Submitter(Services(settings))
    caller = ApiKey("k1", "acme", "2026-01-01T00:00:00Z", None, None)
    body = {"kind": "caption", "input": {"image": "https://example.com/cat.png"}, "queue_timeout_s": 600}
    with pytest.raises(InvalidInput, match="known caption models: blip, vit-gpt2, vlm"):
        submitter.submit(caller, {**body, "model": "nope"})
    record = submitter.submit(caller, {**body, "model": "vlm"}).record
    assert record.model == "vlm"
    queue = settings.redis_prefix + ":visionq.caption.vlm\x06\x163"  # kombu's list of normal priority
    redis_client = submitter.services.redis
    # (a canceled job's message may wait there too, until a worker drops it)
    assert record.id in [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange(queue, 0, -1)]
    submitter.services.store.request_cancel(record.id)


def test_a_model_configured_only_on_its_worker_is_known_through_the_registry(
    service_env: dict[str, str], tiny_models: Path, tmp_path: Path,
) -> None:
    env = {**service_env, "VISIONQ_REDIS_PREFIX": f"vqreg-{uuid.uuid4().hex[:8]}"}
    client = Client(settings=Settings.from_env(env))  # the submitter's settings do not name it
    with pytest.raises(InvalidInput, match="model 'mine' is not served for caption jobs"):
        client.caption(scene(), model="mine")  # no worker ever served it
    worker_env = {**env, "VISIONQ_MODELS": f"caption/mine={tiny_models / 'caption-vit-gpt2'}"}
    process = WorkerProcess(worker_env, tmp_path, ["worker", "--device", "cpu", "--serve", "caption/mine"]).start()
    try:
        job = client.caption(scene(seed=7), model="mine", max_new_tokens=5).wait(timeout=TIMEOUT)
        assert job.status == "succeeded", job.to_dict()
        assert words_of(job) <= set(VIT_GPT2_WORDS)  # the weights VISIONQ_MODELS gave the name
        assert job.to_dict()["model"] == "mine"
        assert job.to_dict()["model_id"] == str(tiny_models / "caption-vit-gpt2")
    finally:
        process.stop()
    # The worker and its heartbeat are gone; the registry is not: the name is still accepted, and waits.
    waiting = client.caption(scene(seed=8), model="mine", queue_timeout_s=600)
    assert waiting.status == "queued"
    client.cancel(waiting.id)


def test_a_model_only_its_submitter_configures_is_counted_while_it_waits(
    service_env: dict[str, str], tiny_models: Path,
) -> None:
    """No worker has served it yet: an autoscaler reading the queue figures must still see its
    jobs, or it never starts the first worker that would."""
    env = {**service_env, "VISIONQ_REDIS_PREFIX": f"vqnew-{uuid.uuid4().hex[:8]}",
           "VISIONQ_MODELS": f"caption/large={tiny_models / 'caption'}"}
    client = Client(settings=Settings.from_env(env))
    waiting = [client.caption(scene(seed=seed), model="large", queue_timeout_s=600) for seed in (1, 2)]
    queues = json.loads(run_visionq("queues", "--json", env={**env, "VISIONQ_MODELS": ""}).stdout)
    assert queues["caption"]["models"]["large"]["total"] == 2 and queues["caption"]["total"] == 2
    assert queues["caption"]["models"]["large"]["live_workers"] == 0
    for job in waiting:
        client.cancel(job.id)
    registry = registered_models(client.store.redis, env["VISIONQ_REDIS_PREFIX"])
    assert registry["caption/large"]["queue"] == "visionq.caption.large"
    assert "caption/blip" not in registry  # the catalogue's names need no entry


def test_a_worker_refuses_an_unknown_model_or_serve_beside_kinds(service_env: dict[str, str]) -> None:
    unknown = run_visionq("worker", "--device", "cpu", "--serve", "caption/nope", env=service_env)
    assert unknown.returncode == 2
    assert "--serve 'caption/nope' is not a model; known:" in unknown.stderr and "caption/vit-gpt2" in unknown.stderr
    both = run_visionq("worker", "--device", "cpu", "--serve", "caption/blip", "--kinds", "caption", env=service_env)
    assert both.returncode == 2 and "--serve and --kinds" in both.stderr
