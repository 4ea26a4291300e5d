"""Models chosen per job: the registry of names workers serve, and the check of a submit's `model`.

A job names a model within its kind (``model="vit-gpt2"``; ``"caption/vit-gpt2"`` is accepted
too), or none for the kind's default. The name decides its queue (`tasks.models.model_queue`),
so only workers that loaded the model take the job. Workers write the names they serve into
one Redis hash that has no TTL: it outlives restarts, so a name served once stays known while
its workers are down (its jobs wait, and expire by their deadline, like any job). A submitter
registers the names outside the catalogue that it submits for, so their waiting jobs are counted
before any worker serves them.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import redis

from tasks.errors import InvalidInput
from tasks.kinds import JobKind, Priority, priority_list_key
from tasks.models import CATALOGUE, MODEL_NAME_PATTERN, ModelRef, default_model, model_entry, model_queue
from tasks.record import utc_now


def registry_key(prefix: str) -> str:
    """Hash "kind/name" -> JSON {"model_id", "queue", "worker", "served_at"}: every model ever served."""
    return f"{prefix}:models"


def publish_served(client: redis.Redis, prefix: str, worker: str, served: dict[str, str]) -> None:
    """Record that `worker` serves `served` ("kind/name" -> model id label) from now on."""
    now = utc_now()
    entries = {}
    for full_name, model_id in served.items():
        kind, name = full_name.split("/", 1)
        entries[full_name] = json.dumps(
            {"model_id": model_id, "queue": model_queue(kind, name), "worker": worker, "served_at": now}
        )
    if entries:
        client.hset(registry_key(prefix), mapping=entries)


CATALOGUE_NAMES = frozenset(entry.full_name for entry in CATALOGUE)


def declare_submitted(client: redis.Redis, prefix: str, full_names: Iterable[str]) -> None:
    """Register names jobs were just submitted for that no worker may have served yet (a
    submitter's own VISIONQ_MODELS): the queue figures (`visionq queues`, /v1/queues,
    visionq_queue_depth, KEDA) count a model's jobs by the registry, so without this a new
    model's first jobs would wait uncounted and never scale a worker up. HSETNX: a served
    name's entry stays as its worker wrote it. The catalogue's names need no entry."""
    now = utc_now()
    with client.pipeline(transaction=False) as pipe:
        for full_name in full_names:
            kind, name = full_name.split("/", 1)
            pipe.hsetnx(registry_key(prefix), full_name, json.dumps(
                {"model_id": None, "queue": model_queue(kind, name), "worker": None, "served_at": None,
                 "submitted_at": now}))
        pipe.execute()


def registered_models(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """Every model some worker has served: "kind/name" -> what it last published."""
    return {k.decode(): json.loads(v) for k, v in client.hgetall(registry_key(prefix)).items()}


def known_names(configured: Iterable[str], registered: Iterable[str] = ()) -> set[str]:
    """The "kind/name"s a submit may choose: the catalogue, the deployment's VISIONQ_MODELS, the registry."""
    return CATALOGUE_NAMES | set(configured) | set(registered)


def choose_model(
    kind: JobKind, value: Any, configured: dict[str, ModelRef], registered: Any,
) -> str:
    """The model name (within `kind`) a submit's `model` names; the kind's default for None.

    `registered()` reads the registry, called only for a name neither the catalogue nor
    VISIONQ_MODELS knows (a submit naming no model, or a catalogue one, costs no Redis call).
    InvalidInput names the value and the known models of the kind."""
    if value is None:
        return default_model(kind.value)
    if not isinstance(value, str):
        raise InvalidInput(f"model must be a string naming a {kind.value} model, got {type(value).__name__}")
    name = value
    if "/" in value:
        given_kind, _, name = value.partition("/")
        if given_kind != kind.value:
            raise InvalidInput(f"model {value[:100]!r} is not a {kind.value} model")
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise InvalidInput(f"model {value[:100]!r} is not a model name (a-z, 0-9, - and _, up to 48)")
    full_name = f"{kind.value}/{name}"
    known = known_names(configured)
    if full_name not in known:
        known = known_names(configured, registered())
    if full_name not in known:
        names = ", ".join(sorted(n.split("/", 1)[1] for n in known if n.startswith(f"{kind.value}/")))
        raise InvalidInput(f"model {value[:100]!r} is not served for {kind.value} jobs; known {kind.value} models: {names}")
    return name


def check_model_input(kind: JobKind, name: str, request: Any) -> None:
    """What a catalogue model's family needs of a job, checked at submit so that such a job fails
    at once, not on a worker: `segment/owlv2-sam` needs labels, `segment/segformer` takes none."""
    try:
        entry = model_entry(f"{kind.value}/{name}")
    except KeyError:  # a model outside the catalogue: its worker checks it
        return
    if entry.labels is None:
        return
    given = getattr(request, "labels", None) is not None
    if entry.labels == "required" and not given:
        raise InvalidInput(f"segment model {name!r} needs labels: it detects what they name")
    if entry.labels == "refused" and given:
        raise InvalidInput(f"segment model {name!r} takes no labels: it finds its own classes")


def queue_lists(kind: JobKind, name: str | None, prefix: str) -> list[str]:
    """The Redis lists (one per priority) of the queue `kind` jobs for model `name` travel on."""
    queue = model_queue(kind.value, name)
    return [priority_list_key(queue, priority, prefix) for priority in Priority]


def models_by_kind(client: redis.Redis, prefix: str) -> dict[JobKind, list[str]]:
    """Per kind, the model names whose queues may hold jobs: the default first, then the
    catalogue's and the registry's other names (what `visionq queues` counts)."""
    names = known_names((), registered_models(client, prefix))
    by_kind: dict[JobKind, list[str]] = {}
    for kind in JobKind:
        default = default_model(kind.value)
        others = sorted(n.split("/", 1)[1] for n in names if n.startswith(f"{kind.value}/"))
        by_kind[kind] = [default, *(n for n in others if n != default)]
    return by_kind
