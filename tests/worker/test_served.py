"""What `visionq worker --serve` loads, decided before anything is loaded (nothing running)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tasks.settings import Settings
from worker.commands import served_models
from worker.loader import parse_served, served_specs
from worker.pipelines.base import ModelSpec


def args(serve: str | None = None, kinds: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(serve=serve, kinds=kinds)


def test_without_serve_a_worker_loads_the_defaults_of_its_kinds() -> None:
    assert served_models(args(), Settings()) == ["caption/blip", "segment/clipseg", "generate/sd"]
    assert served_models(args(kinds="caption"), Settings()) == ["caption/blip"]


def test_serve_names_models_and_refuses_unknown_ones_or_kinds_beside_it() -> None:
    settings = Settings(named_models={"caption/large": {"model_id": "org/large"}})
    assert served_models(args("caption/blip, caption/large,caption/blip"), settings) == ["caption/blip", "caption/large"]
    with pytest.raises(ValueError, match=r"--serve 'caption/nope' is not a model; known: .*caption/large"):
        parse_served("caption/nope", settings)
    with pytest.raises(ValueError, match="--serve and --kinds"):
        served_models(args("caption/blip", "caption"), settings)
    with pytest.raises(ValueError, match="names no model"):
        parse_served(" , ", settings)


def test_where_each_served_model_finds_its_weights(tmp_path: Path) -> None:
    settings = Settings(models={**Settings().models, "caption": "org/my-blip"},
                        revisions={"caption": "v1"}, named_models={"caption/large": {"model_id": "org/large"}})
    assert served_specs("caption/blip", settings) == [ModelSpec("org/my-blip", "v1")]  # VISIONQ_CAPTION_MODEL
    assert served_specs("caption/large", settings) == [ModelSpec("org/large")]  # VISIONQ_MODELS
    assert served_specs("caption/vit-gpt2", settings) == [ModelSpec("nlpconnect/vit-gpt2-image-captioning")]
    assert served_specs("segment/owlv2-sam", settings) == [
        ModelSpec("google/owlv2-base-patch16-ensemble"), ModelSpec("facebook/sam-vit-base")]
    # segment's default serves labels and no labels: both of its models are loaded (and sized)
    assert [s.model_id for s in served_specs("segment/clipseg", settings)] == [
        settings.models["segment"], settings.models["semantic"]]
    folder = Settings().with_models_dir(tmp_path)
    assert served_specs("caption/vit-gpt2", folder) == [ModelSpec(str(tmp_path.resolve() / "caption-vit-gpt2"))]


def test_the_semantic_model_served_from_the_segment_default_says_whose_weights_it_uses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`visionq workers` showed `segment/segformer weights_mb=?`: its weights are the default's."""
    from types import SimpleNamespace

    from producer import cli
    from worker.process import served_models_info

    pipelines = {name: SimpleNamespace(model_label=name) for name in ("segment/clipseg", "segment/segformer")}
    info = served_models_info(pipelines, {"segment/clipseg": 3 * 2**20})  # type: ignore[arg-type]
    assert info["segment/clipseg"]["weights_mb"] == 3.0 and "weights_in" not in info["segment/clipseg"]
    assert info["segment/segformer"]["weights_mb"] is None
    assert info["segment/segformer"]["weights_in"] == "segment/clipseg"
    beat = {"name": "w1", "state": "ready", "kinds": ["segment"], "models": info}
    monkeypatch.setattr("tasks.heartbeats.list_workers", lambda client, prefix: [beat])
    monkeypatch.setattr(cli, "_client", lambda: SimpleNamespace(gateway=None, store=SimpleNamespace(redis=None),
                                                               settings=SimpleNamespace(redis_prefix="p")))
    cli.main(["workers"])
    assert "segment/segformer        weights_mb=in:segment/clipseg" in capsys.readouterr().out
