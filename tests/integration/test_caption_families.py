"""Each caption family end to end: a real worker whose caption model is that family's tiny
model, jobs through Redis and storage; the words of the caption prove which family ran."""
from __future__ import annotations

from pathlib import Path

import pytest

from producer.client import Client
from tasks.settings import Settings
from tests.support.images import scene
from tests.support.workers import WorkerProcess
from worker.tiny_captioners import VIT_GPT2_WORDS, VLM_WORDS

pytestmark = pytest.mark.integration
TIMEOUT = 120


@pytest.mark.parametrize(("folder", "words"), [("caption-vit-gpt2", VIT_GPT2_WORDS), ("caption-vlm", VLM_WORDS)])
def test_a_worker_captions_with_the_family_its_model_is(
    service_env: dict[str, str], tiny_models: Path, tmp_path: Path, folder: str, words: list[str]
) -> None:
    env = {**service_env, "VISIONQ_REDIS_PREFIX": f"vqfam{folder[-3:]}",
           "VISIONQ_CAPTION_MODEL": str(tiny_models / folder)}
    process = WorkerProcess(env, tmp_path, ["worker", "--device", "cpu", "--kinds", "caption"]).start()
    try:
        client = Client(settings=Settings.from_env(env))
        jobs = [client.caption(scene(seed=4 * n), max_new_tokens=6) for n in range(3)]
        for job in jobs:
            job.wait(timeout=TIMEOUT)
            assert job.status == "succeeded", job.to_dict()
            said = job.output["text"].split()
            assert said and set(said) <= set(words), said
            assert job.to_dict()["model"] == "blip"  # the default's name, here given other weights
            assert job.to_dict()["model_id"] == str(tiny_models / folder)
    finally:
        process.stop()
