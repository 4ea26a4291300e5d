"""Turning one HTTP job body into a queued job of a tenant.

The same checks as the SDK (`tasks.schemas`, `tasks.webhooks`), plus what only a
gateway needs: the tenant's own idempotency keys (a reused key with another body
is a conflict), its quotas, its webhook secret, and inputs confined to what the
tenant may read: no `file://`, and `s3://` only under the tenant's own prefix.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import redis

from producer.gateway.keys import ApiKey
from producer.gateway.services import Services
from producer.http_errors import Conflict, Unavailable
from tasks.errors import InvalidInput, VisionqError
from tasks.expiry import check_queue_timeout
from tasks.images import accepted_extension
from tasks.kinds import JobKind, Priority
from tasks.messages import job_enqueue, redis_db
from tasks.record import JobRecord
from tasks.schemas import JobRequest, parse_request, request_to_message, request_to_record
from tasks.served_models import check_model_input, choose_model, registered_models
from tasks.storage import S3Storage, input_key
from tasks.store import Enqueue, NewJob, same_submit
from tasks.webhooks import validate_webhook

log = logging.getLogger("visionq.gateway")

# The top-level fields of a job body; the method's parameters are in `input`.
JOB_FIELDS = frozenset({"kind", "input", "model", "webhook", "webhook_events", "priority", "queue_timeout_s",
                        "idempotency_key"})
TENANTS_FOLDER = "tenants"  # <storage prefix>/tenants/<tenant>/: what a tenant may name, and its uploads
_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass(frozen=True)
class Checked:
    """A job body that passed every check, ready to be queued."""

    request: JobRequest
    priority: Priority
    webhook: dict[str, Any] | None
    queue_timeout_s: float  # the body's, or the kind's default (tasks/expiry.py)
    model: str  # the model's name within the kind: the body's `model`, or the default (tasks/served_models.py)
    idempotency_key: str | None = None  # the body's (a batch's jobs have no header of their own)


@dataclass(frozen=True)
class Submission:
    record: JobRecord
    created: bool  # False: an earlier job with the same Idempotency-Key and body


class Submitter:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

    def submit(
        self, caller: ApiKey, body: Any, *, image: bytes | None = None, idempotency_key: str | None = None,
    ) -> Submission:
        return self.submit_checked(caller, self.check(caller, body, image=image), idempotency_key=idempotency_key)

    def check(self, caller: ApiKey, body: Any, *, image: bytes | None = None) -> Checked:
        """The body validated (and a multipart image stored): nothing is queued yet."""
        return Checked(*self._parse(caller.tenant, body, image))

    def submit_checked(self, caller: ApiKey, checked: Checked, *, idempotency_key: str | None = None) -> Submission:
        """`idempotency_key`: the Idempotency-Key header's; the body's `idempotency_key` may say the same."""
        webhook = checked.webhook
        if idempotency_key is not None:
            self._check_key("Idempotency-Key", idempotency_key)
            if checked.idempotency_key not in (None, idempotency_key):
                raise InvalidInput("the Idempotency-Key header and the body's idempotency_key differ")
        idempotency_key = idempotency_key or checked.idempotency_key
        services = self.services
        services.rate_limiter.take(caller.key_id, caller.rate)
        token = services.tenant_jobs.admit(caller.tenant, caller.max_queued)
        try:
            new_job = self._new_job(caller, checked, idempotency_key)
            if webhook is not None:
                self._sign_with_tenant_secret(caller, new_job[0].record.id)
            record, created = services.store.create_many([new_job])[0]
        except BaseException:
            services.tenant_jobs.release(caller.tenant, token)
            raise
        if not created:
            services.tenant_jobs.release(caller.tenant, token)
            return self._repeated(record, new_job[0].record)
        self._register(caller, record.id, token)
        return Submission(record, created=True)

    @staticmethod
    def _repeated(held: JobRecord, new: JobRecord) -> Submission:
        """A submit whose idempotency key holds job `held`: that job, if the bodies are the same."""
        if not same_submit(held, new):
            raise Conflict(f"idempotency key {new.idempotency_key!r} was used for job {held.id} with another body")
        return Submission(held, created=False)

    def _check_key(self, source: str, key: Any) -> str:
        most = self.settings.limits.max_key_chars
        if not isinstance(key, str) or not 0 < len(key) <= most:
            shown = f"{len(key)} characters" if isinstance(key, str) else f"a {type(key).__name__}"
            raise InvalidInput(f"{source} is {shown}; it must be a string of 1..{most} characters")
        return key

    def _sign_with_tenant_secret(self, caller: ApiKey, job_id: str) -> None:
        # Set before the job exists: its first event may be signed the moment it is queued.
        self.services.deliveries.set_job_secret(job_id, self.services.keys.tenant_secret(caller.tenant))

    def _register(self, caller: ApiKey, job_id: str, token: str) -> None:
        """The stored job into its tenant's listing, in place of its reservation. A failure here
        is logged, not answered: the job exists, and a 503 would have its client submit it again.
        Its reservation then counts against max_queued until it expires."""
        try:
            self.services.tenant_jobs.register(caller.tenant, job_id, token)
        except redis.RedisError as exc:
            log.warning("job %s of tenant %s is stored but not listed (Redis: %s)", job_id, caller.tenant, exc)

    def submit_checked_many(self, caller: ApiKey, checked: list[Checked]) -> list[Submission | VisionqError]:
        """Jobs of one batch: each admitted by the rate limit and quota on its own, then every
        admitted one written in one pipelined round trip (tasks/store.py `create_many`, as
        `Client.submit_many`). Per job, its Submission or what refused it (a job's idempotency
        key held by another body: Conflict)."""
        services = self.services
        results: list[Submission | VisionqError | None] = [None] * len(checked)
        admitted: list[tuple[int, str, Checked]] = []
        try:
            for index, job in enumerate(checked):
                try:
                    services.rate_limiter.take(caller.key_id, caller.rate)
                    admitted.append((index, services.tenant_jobs.admit(caller.tenant, caller.max_queued), job))
                except VisionqError as exc:
                    results[index] = exc
            new_jobs = [self._new_job(caller, job, job.idempotency_key) for _, _, job in admitted]
            for (_, _, job), (new, _) in zip(admitted, new_jobs):
                if job.webhook is not None:
                    self._sign_with_tenant_secret(caller, new.record.id)
            stored = services.store.create_many(new_jobs, per_job_errors=True)
        except BaseException:
            for _, token, _ in admitted:
                services.tenant_jobs.release(caller.tenant, token)
            raise
        for (index, token, _), (new, _enqueue), outcome in zip(admitted, new_jobs, stored):
            if isinstance(outcome, redis.RedisError):  # this job refused (out of memory, ...), not the others
                # Redis's own words stay in the log, as for any Redis failure the gateway answers.
                log.warning("Redis refused to store a job of tenant %s: %s", caller.tenant, outcome)
                results[index] = Unavailable(f"Redis refused to store this job ({type(outcome).__name__})")
                try:
                    services.tenant_jobs.release(caller.tenant, token)
                except redis.RedisError:
                    pass  # the reservation expires by itself
                continue
            record, created = outcome
            if not created:  # its idempotency key holds an earlier job
                services.tenant_jobs.release(caller.tenant, token)
                try:
                    results[index] = self._repeated(record, new.record)
                except Conflict as exc:
                    results[index] = exc
                continue
            self._register(caller, record.id, token)
            results[index] = Submission(record, created=True)
        return results  # type: ignore[return-value]

    def _new_job(self, caller: ApiKey, checked: Checked, idempotency_key: str | None) -> tuple[NewJob, Enqueue]:
        """The job's record and Celery message, to be written together in one script."""
        request = checked.request
        message = request_to_message(request)
        new = self.services.store.new_job(
            request.kind, request_to_record(request), idempotency_key, checked.webhook, checked.priority.value,
            message=message, tenant=caller.tenant, queue_timeout_s=checked.queue_timeout_s, model=checked.model,
        )
        events_db = redis_db(self.settings.redis_url) if self.settings.task_events else None
        return new, job_enqueue(new.record, message, self.settings.redis_prefix, events_db)

    def _parse(
        self, tenant: str, body: Any, image: bytes | None,
    ) -> tuple[JobRequest, Priority, dict[str, Any] | None, float, str, str | None]:
        if not isinstance(body, dict):
            raise InvalidInput(f"a job must be a JSON object, got {type(body).__name__}")
        unknown = set(body) - JOB_FIELDS
        if unknown:
            raise InvalidInput(
                f"unknown job field(s): {', '.join(sorted(unknown))}; the method's parameters go in \"input\""
            )
        kind = body.get("kind")
        try:
            job_kind = JobKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in JobKind)
            raise InvalidInput(f"kind {kind!r} is not one of {known}") from None
        params = body.get("input", {})
        if not isinstance(params, dict):
            raise InvalidInput(f"input must be an object, got {type(params).__name__}")
        params = dict(params)
        if image is not None:
            if job_kind is JobKind.GENERATE:
                raise InvalidInput("a generate job takes no image")
            if params.get("image") is not None:
                raise InvalidInput("the image is given twice: as a file part and as input.image")
            params["image"] = self._store_image(tenant, image)
        elif isinstance(params.get("image"), str):
            self._check_image_reference(tenant, params["image"])
        request = parse_request(job_kind, params, self.settings.limits)
        priority_name = body.get("priority", "normal")
        try:
            priority = Priority(priority_name)
        except ValueError:
            raise InvalidInput(f"priority {priority_name!r} must be one of high, normal, low") from None
        url, events = body.get("webhook"), body.get("webhook_events")
        if url is None and events is not None:
            raise InvalidInput("webhook_events needs a webhook URL")
        webhook = None if url is None else validate_webhook(url, events, self.settings.limits, self.settings.webhook_allow)
        queue_timeout_s = check_queue_timeout(body.get("queue_timeout_s"), job_kind, self.settings)
        model = choose_model(job_kind, body.get("model"), self.settings.named_models,
                             lambda: registered_models(self.services.redis, self.settings.redis_prefix))
        check_model_input(job_kind, model, request)
        key = body.get("idempotency_key")
        if key is not None:
            key = self._check_key("idempotency_key", key)
        return request, priority, webhook, queue_timeout_s, model, key

    def tenant_prefix(self, tenant: str) -> str | None:
        """The s3:// prefix whose objects this tenant may name as inputs (None with local storage)."""
        storage = self.services.storage
        if not isinstance(storage, S3Storage):
            return None
        base = f"{storage.prefix}/" if storage.prefix else ""
        return f"s3://{storage.bucket}/{base}{TENANTS_FOLDER}/{tenant}/"

    def _check_image_reference(self, tenant: str, uri: str) -> None:
        if uri.startswith("file://"):
            raise InvalidInput("file:// images are not accepted over HTTP: send the file as a multipart part")
        if uri.startswith("s3://"):
            allowed = self.tenant_prefix(tenant)
            if allowed is None:
                raise InvalidInput(f"image {uri[:200]!r}: this deployment stores files locally, not in S3")
            if not uri.startswith(allowed) or "/../" in uri or len(uri) == len(allowed):
                raise InvalidInput(f"image {uri[:200]!r} is outside this tenant's storage prefix {allowed}")

    def _store_image(self, tenant: str, data: bytes) -> str:
        limit = self.settings.limits.max_image_bytes
        if len(data) > limit:
            raise InvalidInput(f"image has {len(data)} bytes, more than the limit {limit}")
        extension = accepted_extension(data)
        # Under the tenant's own prefix: the job's `input.image` can be submitted again by its
        # tenant, and no tenant learns whether another uploaded some image.
        key = f"{TENANTS_FOLDER}/{tenant}/{input_key(hashlib.sha256(data).hexdigest(), extension)}"
        storage = self.services.storage
        # Content-addressed like the SDK's uploads: the same image is stored once a tenant.
        if storage.exists(key):
            return storage.ref(key, data, _CONTENT_TYPES[extension]).uri
        return storage.put(key, data, _CONTENT_TYPES[extension]).uri
