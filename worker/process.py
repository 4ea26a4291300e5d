"""One worker process: pin the device, load and warm the models, announce, consume.

Pool choice: Celery's `threads` pool with one slot. The models live in this
process (no fork after CUDA is initialised, no reload per child) and the
consumer's main thread stays free while a job runs, so broker heartbeats,
remote control and warm shutdown keep working; `solo` would block them all
for the length of a generation. Celery's own soft/hard time limits need
prefork, which would fork after the models are on the GPU.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any, Callable

from PIL import Image

from tasks.app import make_celery
from tasks.deliveries import DeliveryStore, EventPublisher
from tasks.kinds import JobKind
from tasks.models import model_queue
from tasks.redis_connect import client_for
from tasks.served_models import publish_served
from tasks.settings import Settings
from tasks.storage import open_storage
from tasks.store import Delivery, JobStore
from worker import loader
from worker.broker import transport_for
from worker.control import answer_remote_control, consume
from worker.heartbeat import Heartbeat
from worker.inputs import InputReader
from worker.pipelines.base import Pipeline
from worker.leases import Leases, delivery_tag, survive_reconnects, unacked_index_key
from worker.observe import JobFailed, Observer, TaskEndings, model_of_queue
from worker.runtime import JobRunner
from worker.results import ResultWriter
from worker.sweeper import Sweeper, celery_publisher, unacked_key
from worker.time_limits import Watchdog

log = logging.getLogger("visionq.worker")


def default_worker_name(device: str) -> str:
    label = device.replace(":", "")
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device.startswith("cuda") and gpu:
        label = f"gpu{gpu}"
    return f"visionq-{label}-{os.getpid()}@{socket.gethostname()}"


def worker_node_name(name: str) -> str:
    """--name as the node name both `visionq workers` and Celery's `-d` use: Celery would turn
    a name without "@" into "celery@NAME"; here it becomes "NAME@<host>", as the defaults are."""
    return name if "@" in name else f"{name}@{socket.gethostname()}"


def run_worker(
    settings: Settings, models: list[str], device: str, name: str, loglevel: str = "INFO",
    metrics_address: tuple[str, int] | None = None,
) -> None:
    """Load and warm up `models` ("kind/name", tasks.models) on `device`, then serve them
    (and /metrics on `metrics_address`, (host, port), when given); with VISIONQ_MODEL_PROCESS,
    from a model process of their own (worker/model_process.py)."""
    from worker.loader import check_memory, load_served, with_role_views

    if settings.model_process:
        from worker.model_process import ModelProcess

        prepare_torch(settings, "cpu")  # its threads for preprocessing and finishing; CUDA is the model process's
        model_process = ModelProcess(settings, models, device)  # sizes and loads while this process announces `loading`
        try:
            serve(settings, model_process.pipelines, name, device, loglevel, metrics_address,
                  weights_bytes=model_process.weights_bytes)
        finally:
            model_process.stop()
        return
    weights = check_memory(settings, models, device)  # refuses a set that does not fit, before loading
    prepare_torch(settings, device)
    serve(settings, lambda: with_role_views(load_served(settings, models, device)), name, device, loglevel,
          metrics_address, weights_bytes=weights)


def prepare_torch(settings: Settings, device: str) -> None:
    """torch's settings for the process that runs the models (this one, or the model process)."""
    import torch

    if device.startswith("cuda") and settings.gpu_memory_fraction:
        # A hard budget for this process's allocator: models and batches beyond it raise
        # CUDA out-of-memory here (batch halved, then out_of_memory) instead of starving
        # the other workers sharing the GPU.
        torch.cuda.set_per_process_memory_fraction(settings.gpu_memory_fraction, 0)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def serve(
    settings: Settings, load: Callable[[], dict[str, Pipeline]], name: str, device: str,
    loglevel: str = "INFO", metrics_address: tuple[str, int] | None = None,
    weights_bytes: dict[str, int] | None = None,
) -> None:
    """Announce `loading`, run `load` (model name "kind/name" -> pipeline), then consume the
    queues of the models it returned. `weights_bytes`: each model's estimated weights (shown
    by `visionq workers`).

    Separate from `run_worker` so the benchmarks can serve stand-in pipelines
    through exactly the same runtime."""
    # Pillow warns about pictures over 89 Mpx; decode_image refuses them itself (over 40 Mpx
    # unless raised) with a clearer message: the warning would only add a log line to a job
    # that fails anyway (worker/images.py).
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    client = client_for(settings)
    heartbeat = Heartbeat(
        client, settings.redis_prefix, name,
        {"device": device, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
         # set by the fleet supervisor: how often this slot's process was replaced
         "restarts": int(restarts) if (restarts := os.environ.get("VISIONQ_WORKER_RESTARTS", "")).isdigit() else 0},
    )
    heartbeat.start()
    try:
        observer = Observer(lambda: heartbeat.state["state"], metrics_address)  # metrics, logs, Celery's view
        pipelines = observer.timed_load(load)
        kinds = list(dict.fromkeys(JobKind(model.split("/", 1)[0]) for model in pipelines))
        queues = [model_queue(*model.split("/", 1)) for model in pipelines]
        heartbeat.update(
            kinds=[k.value for k in kinds], model_loads=loader.model_loads(),
            models=served_models_info(pipelines, weights_bytes or {}),
        )
        # Before consuming: a submit naming one of these models is accepted from now on.
        publish_served(client, settings.redis_prefix, name, {m: p.model_label for m, p in pipelines.items()})
        storage = open_storage(
            settings.storage_url, presign_expiry_s=settings.presign_expiry_s, retry_s=settings.storage_retry_s
        )
        store = JobStore(client, ttl_s=settings.job_ttl_s, prefix=settings.redis_prefix)
        app = make_celery(settings)
        # kombu's Redis (or Sentinel) transport, one client reused per channel (worker/broker.py)
        app.conf.broker_transport = transport_for(settings.redis_url)
        app.conf.worker_consumer = "worker.celery_events:BatchedEventsConsumer"  # task events in batches
        deliveries = DeliveryStore(client, prefix=settings.redis_prefix, ttl_s=settings.job_ttl_s)
        runner = JobRunner(
            settings=settings,
            store=store,
            storage=storage,
            inputs=InputReader(
                storage, settings.limits, settings.fetch_allow, fetch_timeout_s=settings.fetch_timeout_s,
                input_buckets=settings.input_buckets,
            ),
            pipelines=pipelines,
            worker_name=name,
            events=EventPublisher(store, deliveries, app),
            watchdog=Watchdog(store),
        )
        leases = Leases(client, settings.redis_prefix, settings.visibility_timeout_s)
        survive_reconnects(client, settings.redis_prefix)
        observer.attach(store, runner.events, runner.on_final)
        register_tasks(app, runner, kinds, leases, observer)
        heartbeat.follow_celery(lambda: {"jobs_done": runner.jobs_done, "model_loads": loader.model_loads()})
        Sweeper(store, celery_publisher(app), settings.sweep_grace_s).start()
        # result.json of the jobs no worker ended, and (task events on) their end told to Celery's monitors
        endings = TaskEndings(client, settings.redis_prefix, settings.redis_url, name) if settings.task_events else None
        ResultWriter(store, storage, settings.storage_retry_s,
                     on_written=endings.announce if endings is not None else None).start()
        answer_remote_control(name, queues)  # `celery control shutdown` asks too (worker/control.py)
        slots = task_slots(settings, pipelines)
        # JSON logs (VISIONQ_LOG_FORMAT=json): no banner, so every line is a JSON object.
        quiet = ["--quiet"] if settings.log_format == "json" else []
        quiet_per_task_lines(loglevel)
        consume(app, [
            *quiet, "worker", "--queues", ",".join(queues), "--pool", "threads",
            "--concurrency", str(slots), "--hostname", name, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle",
        ], name)
    finally:
        heartbeat.stop()


def quiet_per_task_lines(loglevel: str) -> None:
    """Celery's "received" and "succeeded in" lines only at DEBUG: each job's one INFO line is
    its final line (worker/observe.py), and two more per job cost CPU on a fast model.
    Celery reads these levels when its worker starts (`_does_info`), so this runs before."""
    level = logging.DEBUG if str(loglevel).upper() == "DEBUG" else logging.WARNING
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(level)


def task_slots(settings: Settings, pipelines: dict[str, Pipeline]) -> int:
    """Celery task threads: one per job that may share a batch (the model itself runs on one
    thread, worker/batching.py), so a worker serving generate next to a batched kind may hold
    up to max_batch generations reserved; two at least, so one job is in the model while another
    fetches its input or encodes and uploads its outputs (with one, the model idled ~12 % between
    tiny SD generations). A kind whose pipelines never batch (`batches = False`) needs no more than
    two. More threads would only wait, and switch contexts (two batches' worth of threads, tried,
    did not make a tiny caption model's batches come faster on 2 cores). With the models in a
    process of their own, twice that: the next batch's jobs are received, decoded and preprocessed
    while this one runs (docs/performance.md)."""
    slots = 2
    for model, pipeline in pipelines.items():
        kind = model.split("/", 1)[0]
        wanted = settings.max_batch.get(kind, 1)
        if not getattr(pipeline, "batches", True):
            wanted = min(wanted, 2)
        slots = max(slots, wanted * 2 if settings.model_process else wanted)
    return slots


def served_models_info(pipelines: dict[str, Pipeline], weights_bytes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """What the heartbeat says of each model served: "kind/name" -> its weights, queue and memory."""
    info = {}
    for model, pipeline in pipelines.items():
        size = weights_bytes.get(model)
        info[model] = {"model_id": pipeline.model_label, "queue": model_queue(*model.split("/", 1)),
                       "weights_mb": None if size is None else round(size / 2**20, 1)}
        holder = loader.role_view_of(model)
        if size is None and holder in pipelines:  # served from the weights of another, counted there
            info[model]["weights_in"] = holder
    return info


def register_tasks(app: Any, runner: JobRunner, kinds: list[JobKind], leases: Leases, observer: Observer) -> None:
    prefix = runner.settings.redis_prefix
    for kind in kinds:
        def run_job(task: Any, job_id: str, request: dict[str, Any], _kind: JobKind = kind) -> None:
            # No Celery retry: a retry republishes through the broker that just failed,
            # and the task's failure would acknowledge (delete) the message. The runner
            # waits for Redis in place instead; every job failure is on its record.
            delivery_info = task.request.delivery_info or {}
            queue = delivery_info.get("routing_key")
            tag = delivery_tag(task.request)
            with leases.hold(tag), observer.in_progress(_kind, queue):
                runner.run(
                    _kind, job_id, request, model=model_of_queue(_kind, queue),
                    priority=delivery_info.get("priority"),
                    # Acknowledged with the job's final status (worker/broker.py).
                    delivery=None if tag is None else Delivery(tag, unacked_index_key(prefix), unacked_key(prefix)),
                    redelivered=bool(delivery_info.get("redelivered")),
                )
            # The job is recorded (and its message will be acknowledged either way): Celery's
            # tools now see it end as it did, FAILURE or REVOKED (worker/observe.py).
            observer.report_to_celery(task, job_id)

        app.task(
            name=kind.task_name, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
            throws=(JobFailed,),  # an expected outcome: logged as one line, no traceback
        )(run_job)

