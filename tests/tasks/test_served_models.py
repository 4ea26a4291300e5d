"""Choosing a model per job, with nothing running: names, queues, VISIONQ_MODELS."""
from __future__ import annotations

import pytest

from tasks.errors import InvalidInput
from tasks.kinds import JobKind, Priority, priority_list_key, queue_list_key
from tasks.models import ModelRef, default_model, model_queue, parse_model_list
from tasks.served_models import choose_model, queue_lists
from tasks.settings import Settings, SettingsError


def no_registry() -> set[str]:
    raise AssertionError("the registry is read only for a name nobody configured")


def test_no_model_is_the_kind_default_and_costs_no_registry_read() -> None:
    assert choose_model(JobKind.CAPTION, None, {}, no_registry) == "blip"
    assert choose_model(JobKind.SEGMENT, None, {}, no_registry) == "clipseg"
    assert choose_model(JobKind.CAPTION, "vit-gpt2", {}, no_registry) == "vit-gpt2"
    assert choose_model(JobKind.CAPTION, "caption/vlm", {}, no_registry) == "vlm"


def test_a_name_from_visionq_models_or_the_registry_is_accepted() -> None:
    configured = {"caption/large": ModelRef("org/large")}
    assert choose_model(JobKind.CAPTION, "large", configured, no_registry) == "large"
    assert choose_model(JobKind.CAPTION, "tagger", {}, lambda: {"caption/tagger"}) == "tagger"


@pytest.mark.parametrize(("value", "message"), [
    ("nope", "model 'nope' is not served for caption jobs; known caption models: blip, tagger, vit-gpt2, vlm"),
    ("segment/clipseg", "model 'segment/clipseg' is not a caption model"),
    ("tagger", None),
    ("Big Model", "is not a model name"),
    (3, "model must be a string"),
    ("sd", "known caption models"),  # generate's model, named without its kind
])
def test_an_unknown_model_is_invalid_input_naming_the_known_ones(value: object, message: str | None) -> None:
    if message is None:
        assert choose_model(JobKind.CAPTION, value, {}, lambda: {"caption/tagger"}) == value
        return
    with pytest.raises(InvalidInput, match=message):
        choose_model(JobKind.CAPTION, value, {}, lambda: {"caption/tagger", "segment/other"})


def test_the_default_stays_on_the_kind_queue_and_others_get_their_own() -> None:
    assert default_model("generate") == "sd"
    assert model_queue("caption", None) == model_queue("caption", "blip") == "visionq.caption"
    assert model_queue("caption", "vit-gpt2") == "visionq.caption.vit-gpt2"
    assert queue_lists(JobKind.CAPTION, "blip", "p") == [queue_list_key(JobKind.CAPTION, p, "p") for p in Priority]
    assert queue_lists(JobKind.CAPTION, "vlm", "p")[1] == priority_list_key("visionq.caption.vlm", Priority.NORMAL, "p")
    assert queue_lists(JobKind.CAPTION, "vlm", "p")[0] == "p:visionq.caption.vlm"  # kombu: level 0 has no suffix


def test_visionq_models_parses_names_ids_and_revisions() -> None:
    assert parse_model_list(" caption/large = org/large@v2 , segment/fine=org/fine,") == {
        "caption/large": ModelRef("org/large", "v2"), "segment/fine": ModelRef("org/fine")}
    settings = Settings.from_env({"VISIONQ_MODELS": "caption/large=org/large@main"})
    assert settings.named_models == {"caption/large": ModelRef("org/large", "main")}
    assert settings.named_models["caption/large"].label == "org/large@main"


@pytest.mark.parametrize(("value", "message"), [
    ("caption/large", "must be kind/name=hf_id"),
    ("paint/x=org/x", "kind 'paint' is not one of"),
    ("caption/Large=org/x", "name 'Large' must be"),
    ("caption/blip=org/x", "caption/blip is a default model; set VISIONQ_CAPTION_MODEL instead"),
    ("segment/segformer=org/x", "set VISIONQ_SEMANTIC_MODEL instead"),
    ("caption/a=x,caption/a=y", "caption/a is given twice"),
    ("caption/a=org/x@", "hf_id or hf_id@revision"),
])
def test_a_bad_visionq_models_fails_at_start_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^VISIONQ_MODELS: .*{message}"):
        Settings.from_env({"VISIONQ_MODELS": value})


def test_a_models_folder_names_the_catalogue_models_beside_the_defaults(tmp_path) -> None:
    settings = Settings().with_models_dir(tmp_path)
    assert settings.named_models["caption/vit-gpt2"] == ModelRef(str(tmp_path.resolve() / "caption-vit-gpt2"))
    assert "caption/blip" not in settings.named_models  # the defaults keep their per-role settings
    from_env = Settings.from_env({"VISIONQ_MODELS_DIR": str(tmp_path), "VISIONQ_MODELS": "caption/vlm=org/vlm"})
    assert from_env.named_models["caption/vlm"] == ModelRef("org/vlm")  # the explicit entry wins
    assert from_env.named_models["segment/owlv2-sam"].model_id.endswith("segment-owlv2-sam")
