"""The Python SDK: submit jobs, get them back, cancel them."""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union
from urllib.parse import unquote, urlparse

import redis
from PIL import Image

from tasks.app import make_celery
from tasks.deliveries import DeliveryStore, EventPublisher
from tasks.expiry import check_queue_timeout
from tasks.errors import InvalidInput, VisionqError
from tasks.images import accepted_extension, png_of
from tasks.kinds import JobKind, Priority
from tasks.limits import MAX_BATCH_JOBS
from tasks.messages import job_enqueue, redis_db
from tasks.record import JobRecord
from tasks.redis_connect import client_for
from tasks.schemas import (
    IMAGE_SCHEMES, missing_local_image, parse_request, request_to_message, request_to_record,
)
from tasks.served_models import check_model_input, choose_model, registered_models
from tasks.settings import Settings
from tasks.storage import Storage, input_key, open_storage
from tasks.store import Enqueue, JobStore, NewJob, same_submit
from tasks.webhooks import secret_key, validate_webhook
from producer.http_errors import Conflict, PayloadTooLarge, Unavailable
from producer.http_source import GatewayJob, HttpJobSource, gateway_job
from producer.job import Job
from producer.redis_source import RedisJobSource

ImageInput = Union[str, Path, bytes, bytearray, Image.Image]

_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
# The options of a bulk request besides kind and input: the keyword options of `Client.caption` & co.
_BULK_OPTIONS = frozenset({
    "priority", "idempotency_key", "webhook", "webhook_events", "webhook_secret", "model", "queue_timeout_s",
})


@dataclass(frozen=True)
class _Prepared:
    """A checked submit, ready to be written: the job, its Celery message and webhook secret."""

    new: NewJob
    enqueue: Enqueue
    webhook_secret: str | None


def _bulk_request(request: Any) -> tuple[JobKind, dict[str, Any], dict[str, Any]]:
    """(kind, parameters, options) of one `submit_many` request, or InvalidInput (its place in the
    returned list says which request it was)."""
    if not isinstance(request, dict):
        raise InvalidInput(f"the request must be an object, got {type(request).__name__}")
    unknown = set(request) - _BULK_OPTIONS - {"kind", "input"}
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(sorted(unknown))}; "
                           "the method's parameters go in \"input\"")
    try:
        kind = JobKind(request.get("kind"))
    except ValueError:
        known = ", ".join(k.value for k in JobKind)
        raise InvalidInput(f"kind {request.get('kind')!r} is not one of {known}") from None
    params = request.get("input", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"input must be an object, got {type(params).__name__}")
    options = {name: request[name] for name in _BULK_OPTIONS if name in request}
    return kind, dict(params), options


class Client:
    """Submits jobs and reads them back.

    Configuration comes from the environment (VISIONQ_REDIS_URL, VISIONQ_STORAGE_URL,
    boto3's AWS_* variables); explicit arguments win. Through an HTTP gateway instead of
    Redis with `api_url` and `api_key` (or VISIONQ_API_URL and VISIONQ_API_KEY, which win
    over the Redis variables): the same methods and `Job`, with a tenant's API key
    (producer/http_source.py).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        storage_url: str | None = None,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        explicit_redis = redis_url is not None or storage_url is not None or settings is not None
        api_url = api_url or (None if explicit_redis else os.environ.get("VISIONQ_API_URL") or None)
        self.gateway: HttpJobSource | None = None
        if api_url is not None:
            key = api_key or os.environ.get("VISIONQ_API_KEY")
            if not key:
                raise InvalidInput(f"the gateway {api_url} needs an API key: pass api_key or set VISIONQ_API_KEY")
            self.gateway = self.jobs = HttpJobSource(api_url, key)
            return
        self.settings = settings or Settings.from_env(redis_url=redis_url, storage_url=storage_url)
        self.store = JobStore(
            client_for(self.settings),
            ttl_s=self.settings.job_ttl_s, prefix=self.settings.redis_prefix,
        )
        self.celery = make_celery(self.settings)
        self.deliveries = DeliveryStore(
            self.store.redis, prefix=self.settings.redis_prefix, ttl_s=self.settings.job_ttl_s
        )
        self.events = EventPublisher(self.store, self.deliveries, self.celery)
        self.jobs = RedisJobSource(self.store, self.events, self.settings.redis_url)
        self._storage: Storage | None = None
        # With task events on, each submit's script publishes Celery's task-sent event too.
        self._sent_event_db = redis_db(self.settings.redis_url) if self.settings.task_events else None

    @property
    def storage(self) -> Storage:
        if self._storage is None:  # built on first upload: submitting a URL needs no storage
            # A submit waits out a storage outage briefly (tasks/storage.py SUBMIT_RETRY_S), not for a
            # job's VISIONQ_STORAGE_RETRY_S: a caller is waiting, and submit_many would wait per image.
            self._storage = open_storage(self.settings.storage_url, presign_expiry_s=self.settings.presign_expiry_s)
        return self._storage

    def caption(
        self, image: ImageInput, *, prompt: str | None = None, max_new_tokens: int = 30,
        num_beams: int = 1, **options: Any,
    ) -> Job:
        return self._submit(JobKind.CAPTION, {
            "image": image, "prompt": prompt, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
        }, **options)

    def segment(
        self, image: ImageInput, *, labels: list[str] | None = None, threshold: float = 0.4, **options: Any,
    ) -> Job:
        return self._submit(JobKind.SEGMENT, {"image": image, "labels": labels, "threshold": threshold}, **options)

    def generate(
        self, prompt: str, *, negative_prompt: str | None = None, width: int = 512, height: int = 512,
        steps: int = 4, guidance_scale: float = 0.0, seed: int | None = None, num_images: int = 1,
        **options: Any,
    ) -> Job:
        return self._submit(JobKind.GENERATE, {
            "prompt": prompt, "negative_prompt": negative_prompt, "width": width, "height": height,
            "steps": steps, "guidance_scale": guidance_scale, "seed": seed, "num_images": num_images,
        }, **options)

    def get(self, job_id: str) -> Job:
        """The job with this id; raises JobNotFound (a KeyError) for an unknown id."""
        return Job(self.jobs, self.jobs.get(job_id))

    def cancel(self, job_id: str) -> Job:
        """A queued job ends `canceled` at once and never runs; a running one stops at
        its next checkpoint (every denoising step for generate; the worker reads the flag every
        0.1 s while the job runs). Final jobs are left as they are."""
        return Job(self.jobs, self.jobs.cancel(job_id))

    def submit_many(self, requests: list[dict[str, Any]], *, chunk_size: int = 500) -> list[Job | VisionqError]:
        """Submit many jobs, pipelined `chunk_size` at a time (one round trip per chunk).

        Each request is shaped like the HTTP gateway's job body: ``{"kind": "caption",
        "input": {"image": ..., ...the method's parameters}, "priority": ..., "idempotency_key": ...,
        "webhook": ..., "webhook_events": ..., "webhook_secret": ..., "model": ..., "queue_timeout_s": ...}``.
        Returns, in request order, the `Job` or the error that refused that request (an
        `InvalidInput`, ...): one bad request loses nothing else.

        Redis failing during the first chunk raises, as for one submit. Failing during a later
        one, the jobs already stored are returned, and this chunk's requests (but those refused
        before it was sent) and the rest get an `Unavailable` saying whether they may have been
        stored (resubmitting one is safe with an `idempotency_key`)."""
        if self.gateway is not None:
            return self._submit_many_through_gateway(requests, chunk_size)
        results: list[Job | VisionqError] = []
        for begin in range(0, len(requests), chunk_size):
            chunk, failed = self._submit_chunk(requests[begin:begin + chunk_size])
            results += chunk
            if failed is not None:
                if begin == 0:
                    raise failed  # no job of the call known to be stored: as for one submit
                results += [Unavailable("not sent: Redis failed while an earlier request was sent")
                            for _ in range(len(requests) - len(results))]
                break
        return results

    def _submit_chunk(self, requests: list[Any]) -> tuple[list[Job | VisionqError], redis.RedisError | None]:
        """`submit_many` of requests written in one round trip; with the Redis error that cut it
        short, if one did (its requests then say they may or may not have been stored)."""
        results: list[Job | VisionqError | None] = [None] * len(requests)
        prepared: list[tuple[int, _Prepared]] = []
        try:
            for index, request in enumerate(requests):
                try:
                    kind, params, options = _bulk_request(request)
                    prepared.append((index, self._prepare(kind, params, **options)))
                except VisionqError as exc:
                    results[index] = exc
            for (index, _), job in zip(prepared, self._store([p for _, p in prepared], per_job_errors=True)):
                results[index] = job
        except redis.RedisError as exc:
            for index, result in enumerate(results):
                if result is None:
                    results[index] = Unavailable(f"Redis failed while this request was sent ({type(exc).__name__}: "
                                                 f"{exc}): it may or may not have been stored")
            return results, exc  # type: ignore[return-value]
        return results, None  # type: ignore[return-value]

    def _submit(self, kind: JobKind, params: dict[str, Any], /, **options: Any) -> Job:
        """Options every kind takes: `idempotency_key` (the same key and request within the TTL
        return the same job; the key with another request raises `Conflict`), `webhook` (URL called back with signed events),
        `webhook_events` (default: the final ones) and `webhook_secret` (whsec_...;
        default VISIONQ_WEBHOOK_SECRET), `priority` (high | normal | low), `queue_timeout_s`
        (seconds it may wait for a worker to start it before it fails `expired`; default
        VISIONQ_QUEUE_TIMEOUT_<KIND>_S), `model` (a model the deployment serves, by its name within
        the kind, e.g. "vit-gpt2"; "caption/vit-gpt2" too; default: the kind's default)."""
        unknown = sorted(set(options) - _BULK_OPTIONS)
        if unknown:  # as Python says it, and the same with or without a gateway
            raise TypeError(f"{kind.value}() got an unexpected keyword argument {unknown[0]!r}; "
                            f"the options are {', '.join(sorted(_BULK_OPTIONS))}")
        if self.gateway is not None:
            return Job(self.gateway, self.gateway.submit_job(kind, params, **options))
        [stored] = self._store([self._prepare(kind, params, **options)])
        if isinstance(stored, VisionqError):
            raise stored
        return stored

    def _submit_many_through_gateway(self, requests: list[Any], chunk_size: int) -> list[Job | VisionqError]:
        """`submit_many` through the gateway: `POST /v1/jobs/batch` a chunk at a time (at most its
        limit of jobs), and each request with a local image (a path, bytes, a PIL image) on its
        own, as the multipart upload a single submit makes, in its turn. The gateway not reached
        or not answering (`ConnectionError`) fails as Redis does straight: raised if nothing was
        sent before, else this send's requests and the rest get an `Unavailable`."""
        assert self.gateway is not None
        results: list[Job | VisionqError | None] = [None] * len(requests)
        for number, send in enumerate(self._gateway_sends(requests, results, min(chunk_size, MAX_BATCH_JOBS))):
            try:
                outcomes = self._send_to_gateway([job for _, job in send])
            except ConnectionError as exc:
                if number == 0:
                    raise  # no job of the call known to be stored: as for one submit
                for index, _ in send:
                    results[index] = Unavailable(f"the gateway did not answer while this request was sent ({exc}): "
                                                 "it may or may not have been stored")
                return [Unavailable("not sent: the gateway did not answer while an earlier request was sent")
                        if result is None else result for result in results]
            for (index, _), outcome in zip(send, outcomes):
                results[index] = Job(self.gateway, outcome) if isinstance(outcome, JobRecord) else outcome
        return results  # type: ignore[return-value]

    @staticmethod
    def _gateway_sends(requests: list[Any], results: list[Job | VisionqError | None],
                       chunk_size: int) -> Iterator[list[tuple[int, GatewayJob]]]:
        """The requests as the gateway takes them, grouped into sends in request order (a batch
        of those that upload nothing; an upload alone), each with its index; a request refused
        before it is sent gets its error in `results`."""
        batch: list[tuple[int, GatewayJob]] = []
        for index, request in enumerate(requests):
            try:
                kind, params, options = _bulk_request(request)
                job = gateway_job(kind, params, **options)
            except VisionqError as exc:
                results[index] = exc
                continue
            if job.upload is not None:  # alone, in its turn: a batch carries no upload
                if batch:
                    yield batch
                    batch = []
                yield [(index, job)]
                continue
            batch.append((index, job))
            if len(batch) == chunk_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _send_to_gateway(self, jobs: list[GatewayJob]) -> list[JobRecord | VisionqError]:
        """One send's outcomes: an upload's record or error; a batch's per job. A batch the gateway
        refuses whole answers that error in every slot, but one too large (inline `data:` images)
        is sent again in halves."""
        assert self.gateway is not None
        if jobs[0].upload is not None:
            try:
                return [self.gateway.submit(jobs[0].body, image=jobs[0].upload,
                                            idempotency_key=jobs[0].idempotency_key)]
            except VisionqError as exc:
                return [exc]
        try:
            return self.gateway.submit_batch(jobs)
        except PayloadTooLarge as exc:
            if len(jobs) == 1:
                return [exc]
            half = len(jobs) // 2
            return self._send_to_gateway(jobs[:half]) + self._send_to_gateway(jobs[half:])
        except VisionqError as exc:
            return [exc] * len(jobs)

    def _prepare(
        self, kind: JobKind, params: dict[str, Any], *, idempotency_key: str | None = None,
        webhook: str | None = None, webhook_events: list[str] | None = None,
        webhook_secret: str | None = None, priority: str = "normal", queue_timeout_s: float | None = None,
        model: str | None = None,
    ) -> _Prepared:
        """Every check of a submit, and its record and Celery message built: nothing is written yet."""
        try:
            job_priority = Priority(priority)
        except ValueError:
            raise InvalidInput(f"priority {priority!r} must be one of high, normal, low") from None
        webhook_spec = self._webhook(webhook, webhook_events, webhook_secret)
        timeout_s = check_queue_timeout(queue_timeout_s, kind, self.settings)
        model_name = choose_model(kind, model, self.settings.named_models, self._registered_models)
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= self.settings.limits.max_key_chars:
                raise InvalidInput(
                    f"idempotency_key must be a string of 1..{self.settings.limits.max_key_chars} characters"
                )
        if "image" in params:
            if _is_local_image(params["image"]):  # every other parameter checked before it is uploaded
                checked = parse_request(kind, {**params, "image": _CHECKED_LATER}, self.settings.limits)
                check_model_input(kind, model_name, checked)
            params["image"] = self._image_uri(params["image"])
        request = parse_request(kind, params, self.settings.limits)
        check_model_input(kind, model_name, request)
        message = request_to_message(request)
        new = self.store.new_job(
            kind, request_to_record(request), idempotency_key, webhook_spec, job_priority.value,
            message=message,  # the sweeper republishes a lost message from it
            queue_timeout_s=timeout_s, model=model_name,
        )
        enqueue = job_enqueue(new.record, message, self.settings.redis_prefix, self._sent_event_db)
        return _Prepared(new, enqueue, webhook_secret)

    def _store(self, prepared: list[_Prepared], *, per_job_errors: bool = False) -> list[Job | VisionqError]:
        """Records and messages written together (tasks/store.py). A request whose idempotency key
        holds another request's job gets a `Conflict`, as over HTTP."""
        for p in prepared:
            if p.webhook_secret is not None:  # before the job exists: its first event may be signed at once
                self.deliveries.set_job_secret(p.new.record.id, p.webhook_secret)
        stored = self.store.create_many([(p.new, p.enqueue) for p in prepared], per_job_errors=per_job_errors)
        jobs: list[Job | VisionqError] = []
        for p, outcome in zip(prepared, stored):
            if isinstance(outcome, redis.RedisError):  # this one refused (out of memory, ...), not the others
                jobs.append(Unavailable(f"Redis refused to store this job: {outcome}"))
                continue
            record, created = outcome
            if not created and not same_submit(record, p.new.record):
                jobs.append(Conflict(f"idempotency_key {record.idempotency_key!r} was used for job {record.id} "
                                     f"with another request"))
                continue
            jobs.append(Job(self.jobs, record))
        return jobs

    def _webhook(self, url: str | None, events: list[str] | None, secret: str | None) -> dict[str, Any] | None:
        if url is None:
            if events is not None or secret is not None:
                raise InvalidInput("webhook_events and webhook_secret need a webhook URL")
            return None
        spec = validate_webhook(url, events, self.settings.limits, self.settings.webhook_allow)  # the URL first
        if secret is None and not self.settings.webhook_secret:
            raise InvalidInput("a webhook needs a signing secret: set VISIONQ_WEBHOOK_SECRET, or give webhook_secret "
                               "(the SDK's argument; a submit-many request's field)")
        try:
            secret_key(secret if secret is not None else self.settings.webhook_secret)
        except ValueError as exc:
            source = "webhook_secret" if secret is not None else "VISIONQ_WEBHOOK_SECRET"
            raise InvalidInput(f"{source}: {exc}") from None
        return spec

    def _registered_models(self) -> set[str]:
        return set(registered_models(self.store.redis, self.settings.redis_prefix))

    def _image_uri(self, image: Any) -> str:
        """A URI for the message: remote references pass through, local data is uploaded."""
        if isinstance(image, Image.Image):
            return self._upload(png_of(image), "PIL image")
        if isinstance(image, (bytes, bytearray)):
            return self._upload(bytes(image))
        if isinstance(image, str) and image.startswith("file://"):
            path = Path(unquote(urlparse(image).path))
            if self._in_local_storage(path):
                return image  # the worker reads it where it is: no copy, no second read
            image = path  # a local file elsewhere, uploaded like a path
        elif isinstance(image, str) and image.startswith(IMAGE_SCHEMES):
            return image
        if isinstance(image, (str, Path)):
            path = Path(image)
            try:  # unreadable (permissions, a name too long, a race): this request's error alone
                if not path.is_file():
                    raise missing_local_image(image)
                size = path.stat().st_size
                if size > self.settings.limits.max_image_bytes:
                    raise InvalidInput(
                        f"image {path} has {size} bytes, more than the limit {self.settings.limits.max_image_bytes}"
                    )
                data = path.read_bytes()
            except OSError as exc:
                raise InvalidInput(f"image {str(path)[:200]} cannot be read: {exc.strerror or exc}") from None
            return self._upload(data, f"image {path}")
        raise InvalidInput(
            f"image must be a path, bytes, a PIL image or a URI string, got {type(image).__name__}"
        )

    def _in_local_storage(self, path: Path) -> bool:
        """Whether `path` is a file inside the local storage folder (file:// storage only).

        A lexical check (no realpath per submit): the worker resolves the path again before
        reading it (LocalStorage.read), so a link leading out of the folder is refused there."""
        if not self.settings.storage_url.startswith("file://"):
            return False
        root = getattr(self.storage, "root", None)
        if root is None:
            return False
        normal = os.path.normpath(path)
        return normal.startswith(f"{root}{os.sep}") and os.path.isfile(normal)

    def _upload(self, data: bytes, what: str = "image") -> str:
        """Store `data` (`what`: how an error names it, e.g. its file) where workers read inputs."""
        limit = self.settings.limits.max_image_bytes
        if len(data) > limit:
            raise InvalidInput(f"{what} has {len(data)} bytes, more than the limit {limit}")
        extension = accepted_extension(data, what)
        digest = hashlib.sha256(data).hexdigest()
        key = input_key(digest, extension)
        # Content-addressed: the same image submitted twice is stored once.
        if self.storage.exists(key):
            return self.storage.ref(key, data, _CONTENT_TYPES[extension]).uri
        return self.storage.put(key, data, _CONTENT_TYPES[extension]).uri


# Stands in for a local image while the other parameters are checked, before it is uploaded.
_CHECKED_LATER = "s3://checked-later/image.png"


def _is_local_image(image: Any) -> bool:
    """Whether `image` is data the SDK uploads (not a URI the workers read where it is)."""
    return not (isinstance(image, str) and image.startswith(IMAGE_SCHEMES) and not image.startswith("file://"))


def inline_image(data: bytes) -> str:
    """A data: URI for a small image, carried inside the queue message instead of storage."""
    extension = accepted_extension(data)
    return f"data:{_CONTENT_TYPES[extension]};base64,{base64.b64encode(data).decode()}"
