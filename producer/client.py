"""The Python SDK: submit jobs, get them back, cancel them."""
from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any, Union
from urllib.parse import unquote, urlparse

from PIL import Image

from tasks.app import make_celery
from tasks.deliveries import DeliveryStore, EventPublisher
from tasks.expiry import check_queue_timeout
from tasks.errors import InternalError, InvalidInput
from tasks.images import image_extension
from tasks.kinds import JobKind, Priority
from tasks.models import model_queue
from tasks.schemas import (
    IMAGE_SCHEMES, JobRequest, parse_request, request_to_message, request_to_record,
)
from tasks.served_models import choose_model, registered_models
from tasks.settings import Settings
from tasks.status import JobStatus
from tasks.storage import Storage, input_key, open_storage
from tasks.store import JobStore
from tasks.webhooks import secret_key, validate_webhook
from producer.job import Job
from producer.redis_source import RedisJobSource

ImageInput = Union[str, Path, bytes, bytearray, Image.Image]

_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class Client:
    """Submits jobs and reads them back.

    Configuration comes from the environment (VISIONQ_REDIS_URL, VISIONQ_STORAGE_URL,
    boto3's AWS_* variables); explicit arguments win.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        storage_url: str | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(redis_url=redis_url, storage_url=storage_url)
        self.store = JobStore.from_url(
            self.settings.redis_url, ttl_s=self.settings.job_ttl_s, prefix=self.settings.redis_prefix
        )
        self.celery = make_celery(self.settings)
        self.deliveries = DeliveryStore(
            self.store.redis, prefix=self.settings.redis_prefix, ttl_s=self.settings.job_ttl_s
        )
        self.events = EventPublisher(self.store, self.deliveries, self.celery)
        self.jobs = RedisJobSource(self.store, self.events, self.settings.redis_url)
        self._storage: Storage | None = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:  # built on first upload: submitting a URL needs no storage
            self._storage = open_storage(
                self.settings.storage_url, presign_expiry_s=self.settings.presign_expiry_s
            )
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
        its next checkpoint (every denoising step for generate). Final jobs are left as they are."""
        return Job(self.jobs, self.jobs.cancel(job_id))

    def _submit(
        self, kind: JobKind, params: dict[str, Any], *, idempotency_key: str | None = None,
        webhook: str | None = None, webhook_events: list[str] | None = None,
        webhook_secret: str | None = None, priority: str = "normal", queue_timeout_s: float | None = None,
        model: str | None = None,
    ) -> Job:
        """Options every kind takes: `idempotency_key` (the same key within the TTL
        returns the same job), `webhook` (URL called back with signed events),
        `webhook_events` (default: the final ones) and `webhook_secret` (whsec_...;
        default VISIONQ_WEBHOOK_SECRET), `priority` (high | normal | low), `queue_timeout_s`
        (seconds it may wait for a worker to start it before it fails `expired`; default
        VISIONQ_QUEUE_TIMEOUT_<KIND>_S), `model` (a model the deployment serves, by its name within
        the kind, e.g. "vit-gpt2"; "caption/vit-gpt2" too; default: the kind's default)."""
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
            params["image"] = self._image_uri(params["image"])
        request = parse_request(kind, params, self.settings.limits)
        record, created = self.store.create(
            kind, request_to_record(request), idempotency_key, webhook_spec, job_priority.value,
            message=request_to_message(request),  # the sweeper republishes a lost message from it
            queue_timeout_s=timeout_s, model=model_name,
        )
        if created:
            if webhook_secret is not None:
                self.deliveries.set_job_secret(record.id, webhook_secret)
            self._enqueue(record.id, request, job_priority, model_name)
        return Job(self.jobs, record)

    def _webhook(self, url: str | None, events: list[str] | None, secret: str | None) -> dict[str, Any] | None:
        if url is None:
            if events is not None or secret is not None:
                raise InvalidInput("webhook_events and webhook_secret need a webhook URL")
            return None
        if secret is None and not self.settings.webhook_secret:
            raise InvalidInput("a webhook needs a signing secret: set VISIONQ_WEBHOOK_SECRET or pass webhook_secret")
        try:
            secret_key(secret if secret is not None else self.settings.webhook_secret)
        except ValueError as exc:
            source = "webhook_secret" if secret is not None else "VISIONQ_WEBHOOK_SECRET"
            raise InvalidInput(f"{source}: {exc}") from None
        return validate_webhook(url, events, self.settings.limits, self.settings.webhook_allow)

    def _registered_models(self) -> set[str]:
        return set(registered_models(self.store.redis, self.settings.redis_prefix))

    def _enqueue(self, job_id: str, request: JobRequest, priority: Priority, model: str) -> None:
        try:
            self.celery.send_task(
                request.kind.task_name, kwargs={"job_id": job_id, "request": request_to_message(request)},
                queue=model_queue(request.kind.value, model), task_id=job_id, priority=priority.level,
            )
        except Exception as exc:
            # Never leave a record that says queued for a message that was never sent.
            error = InternalError(f"could not enqueue the job: {exc}").to_dict()
            self.store.transition(job_id, JobStatus.FAILED, error=error)
            raise

    def _image_uri(self, image: Any) -> str:
        """A URI for the message: remote references pass through, local data is uploaded."""
        if isinstance(image, Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return self._upload(buffer.getvalue())
        if isinstance(image, (bytes, bytearray)):
            return self._upload(bytes(image))
        if isinstance(image, str) and image.startswith("file://"):
            image = Path(unquote(urlparse(image).path))  # a local file, uploaded like a path
        elif isinstance(image, str) and image.startswith(IMAGE_SCHEMES):
            return image
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise InvalidInput(f"image {str(image)[:200]!r} is neither a URI nor an existing file")
            size = path.stat().st_size
            if size > self.settings.limits.max_image_bytes:
                raise InvalidInput(
                    f"image {path} has {size} bytes, more than the limit {self.settings.limits.max_image_bytes}"
                )
            return self._upload(path.read_bytes())
        raise InvalidInput(
            f"image must be a path, bytes, a PIL image or a URI string, got {type(image).__name__}"
        )

    def _upload(self, data: bytes) -> str:
        limit = self.settings.limits.max_image_bytes
        if len(data) > limit:
            raise InvalidInput(f"image has {len(data)} bytes, more than the limit {limit}")
        extension = image_extension(data)
        if extension is None:
            raise InvalidInput("image is not a JPEG, PNG or WebP file")
        digest = hashlib.sha256(data).hexdigest()
        key = input_key(digest, extension)
        # Content-addressed: the same image submitted twice is stored once.
        if self.storage.exists(key):
            return self.storage.ref(key, data, _CONTENT_TYPES[extension]).uri
        return self.storage.put(key, data, _CONTENT_TYPES[extension]).uri


def inline_image(data: bytes) -> str:
    """A data: URI for a small image, carried inside the queue message instead of storage."""
    extension = image_extension(data)
    if extension is None:
        raise InvalidInput("image is not a JPEG, PNG or WebP file")
    return f"data:{_CONTENT_TYPES[extension]};base64,{base64.b64encode(data).decode()}"
