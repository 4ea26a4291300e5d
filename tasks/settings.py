"""Configuration: every `VISIONQ_*` variable, typed and checked once, at start.

`Settings.from_env()` reads the environment in this one place; explicit arguments
win (``Settings.from_env(redis_url=...)``). A value that does not parse, is out of
range, or a `VISIONQ_*` variable nobody reads (a typo) raises `SettingsError`
naming the variable, so a deployment fails at start instead of on some later job.
S3 credentials and endpoint are *not* read here: boto3 reads its own standard
variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), so every S3-compatible store
configures exactly as it does for the AWS CLI.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.kinds import JobKind
from tasks.limits import Limits
# The model tables (role -> default Hugging Face id / models-dir sub-folder) live in the catalogue.
from tasks.models import (  # noqa: F401 - DEFAULT_MODELS and MODEL_DIR_NAMES re-exported
    CATALOGUE, DEFAULT_MODELS, MODEL_DIR_NAMES, ROLE_MODELS, ModelRef, parse_model_list,
)
from tasks.redis_connect import is_sentinel, parse_sentinel_url
from tasks.ssrf import AllowList, BucketAllowList
from tasks.webhooks import secret_key

DAY_S = 24 * 3600
MAX_PRESIGN_EXPIRY_S = 7 * DAY_S  # S3 refuses SigV4 URLs valid longer than 7 days

# Micro-batching: how many compatible jobs of a kind may share one forward pass.
# Generation batches little on GPUs already busy with one large image; off by default.
DEFAULT_MAX_BATCH: dict[str, int] = {"caption": 8, "segment": 8, "generate": 1}
MAX_BATCH_LIMIT = 1024

# Per-kind wall-clock limits; the visibility timeout must exceed the longest.
DEFAULT_TIME_LIMITS_S: dict[str, float] = {"caption": 120.0, "segment": 120.0, "generate": 600.0}

# How long a job may wait for a worker to start it before it fails `expired`: well above a
# cold start (pulling an image, loading models), so only a kind nobody serves expires.
DEFAULT_QUEUE_TIMEOUTS_S: dict[str, float] = {"caption": 3600.0, "segment": 3600.0, "generate": 3600.0}

# Seconds to wait before each webhook attempt: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_WEBHOOK_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)

# VISIONQ_* variables read outside Settings (scripts, the SDK's HTTP mode, logging):
# known, so that the typo check does not refuse them.
OTHER_VARIABLES = frozenset({
    "VISIONQ_VENV", "VISIONQ_PYTHON", "VISIONQ_API_URL", "VISIONQ_API_KEY",
    "VISIONQ_REDIS_SERVER",  # the redis-server binary of the demo, tests and benchmarks (producer/redis_server.py)
    "VISIONQ_WORKER_RESTARTS",  # set by the fleet supervisor in its children (worker/fleet.py)
})


class SettingsError(ValueError):
    """A setting that cannot be used; the message names its variable (or argument)."""


def _default_storage_url() -> str:
    return (Path.home() / ".visionq" / "storage").as_uri()


class Settings(BaseModel):
    # allow_inf_nan: "inf" and "nan" parse as floats, and no duration, size or scale is either
    # (VISIONQ_MAX_WAIT_MS=inf froze a worker's batching for good).
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinel_master: str = Field("mymaster", min_length=1, max_length=200)  # with a sentinel:// URL
    # The sentinels' own password (their `requirepass`), when they ask for one: the URL's is the primary's.
    redis_sentinel_password: str | None = Field(None, repr=False)
    storage_url: str = Field(default_factory=_default_storage_url)
    redis_prefix: str = Field("visionq", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")  # every Redis key of ours starts with it
    job_ttl_s: int = Field(7 * DAY_S, gt=0)
    visibility_timeout_s: int = Field(3600, gt=0)
    presign_expiry_s: int = Field(DAY_S, gt=0, le=MAX_PRESIGN_EXPIRY_S)
    # The S3 endpoint as the gateway's clients reach it (http://localhost:9000 in compose), when the
    # workers' AWS_ENDPOINT_URL is an internal host name: the gateway presigns output URLs for it.
    storage_public_url: str | None = None
    # Level 6 costs ~4x the encode time of level 1 for 15-40 % smaller files.
    png_compress_level: int = Field(1, ge=0, le=9)
    models: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MODELS))
    revisions: dict[str, str | None] = Field(default_factory=dict)
    # VISIONQ_MODELS: models beside the kind defaults, "kind/name" -> weights, from
    # "kind/name=hf_id[@revision],..." (tasks.models.parse_model_list; docs/models.md).
    named_models: dict[str, ModelRef] = Field(default_factory=dict)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    torch_threads: int | None = Field(None, ge=1)
    fetch_allow: AllowList = AllowList()  # CIDRs/hosts that image URLs may reach despite the SSRF guard
    # Wall-clock limit on fetching an image URL: connect, TLS, headers and body together.
    fetch_timeout_s: float = Field(15.0, gt=0)
    # s3:// inputs outside the storage bucket/prefix a worker may read: "bucket" or "bucket/prefix",
    # comma-separated (tasks.ssrf.BucketAllowList parses it; docs/security.md).
    input_buckets: BucketAllowList = BucketAllowList()
    webhook_secret: str | None = Field(None, repr=False)  # whsec_<base64>; a job may bring its own
    webhook_allow: AllowList = AllowList()  # CIDRs/hosts webhooks may reach despite the SSRF guard
    webhook_schedule: tuple[float, ...] = DEFAULT_WEBHOOK_SCHEDULE_S  # seconds before each attempt
    webhook_timeout_s: float = Field(10.0, gt=0)  # per attempt, the whole exchange
    limits: Limits = Field(default_factory=Limits)
    time_limits_s: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TIME_LIMITS_S))
    # Per kind, the default time-to-start deadline of a job submitted here (a submit's
    # queue_timeout_s wins); past it a job nobody started fails `expired` (docs/observability.md).
    queue_timeouts_s: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_QUEUE_TIMEOUTS_S))
    # Celery task events (task-sent/received/started/succeeded/failed/revoked): what Flower
    # and `celery events` show. One small Redis PUBLISH per event; off saves that.
    task_events: bool = True
    # The models in a process of their own beside the worker's (worker/model_process.py): the
    # worker's per-job Python then no longer shares an interpreter lock with the model's.
    model_process: bool = False
    log_format: str = Field("text", pattern=r"^(text|json)$")  # json: one JSON object per line
    max_batch: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_MAX_BATCH))
    # Cap of this worker's share of its GPU (several workers per GPU).
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    # On the CPU: the MiB a worker's model weights may take (worker/model_memory.py); unset, no check.
    memory_budget_mb: float | None = Field(None, gt=0)
    max_wait_ms: float = Field(5.0, ge=0, le=60_000)  # how long a batch waits to fill once its first job arrived
    # A `queued` job whose message is in no queue list and not reserved by any worker
    # for this long is published again by the sweeper (docs/reliability.md).
    sweep_grace_s: float = Field(15.0, gt=0)
    # How long a job waits out a storage outage before failing `storage_error`: more
    # than the 3 minutes an outage must be survived (docs/reliability.md).
    storage_retry_s: float = Field(300.0, ge=0)
    # Runs that started (not sweeper republishes) before a redelivered job fails `worker_lost`.
    max_attempts: int = Field(3, ge=1)
    # Jobs one gateway process follows at once (event streams and `Prefer: wait`), per tenant
    # and in all: each holds a client connection while it lasts, all share one Redis pub/sub
    # connection (producer/gateway/events.py).
    gateway_streams_per_tenant: int = Field(32, ge=1)
    gateway_streams: int = Field(500, ge=1)

    @field_validator("fetch_allow", "webhook_allow", mode="before")
    @classmethod
    def _parse_allow_list(cls, value: Any) -> Any:
        return AllowList.parse(value) if isinstance(value, str) or value is None else value

    @field_validator("input_buckets", mode="before")
    @classmethod
    def _parse_bucket_list(cls, value: Any) -> Any:
        return BucketAllowList.parse(value) if isinstance(value, str) or value is None else value

    @field_validator("named_models", mode="before")
    @classmethod
    def _parse_named_models(cls, value: Any) -> Any:
        return parse_model_list(value) if isinstance(value, str) else value

    @field_validator("webhook_secret")
    @classmethod
    def _check_secret(cls, value: str | None) -> str | None:
        if value is not None:
            secret_key(value)  # ValueError unless whsec_<base64> of at least 24 bytes
        return value

    @field_validator("webhook_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_schedule")
    @classmethod
    def _check_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not math.isfinite(delay) or delay < 0 for delay in value):
            raise ValueError("needs at least one delay in seconds, none negative or infinite (e.g. 0,5,300)")
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if not value.startswith(("s3://", "file://")):
            raise ValueError(f"{value!r} must be s3://bucket/prefix or file:///dir")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if is_sentinel(value):
            parse_sentinel_url(value)  # a ValueError says what is wrong
        elif not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{redacted_url(value)!r} must be a redis://, rediss://, unix:// or sentinel:// URL")
        return value

    @model_validator(mode="after")
    def _check_per_kind(self) -> Settings:
        for kind, n in self.max_batch.items():
            if not 1 <= n <= MAX_BATCH_LIMIT:  # a worker's prefetch follows it: kombu drops its cap past 65535
                raise ValueError(f"VISIONQ_MAX_BATCH_{kind.upper()} must be 1 to {MAX_BATCH_LIMIT}, got {n}")
        for kind, limit in self.time_limits_s.items():
            if limit <= 0:
                raise ValueError(f"VISIONQ_TIME_LIMIT_{kind.upper()}_S must be positive, got {limit:g}")
        for kind, timeout in self.queue_timeouts_s.items():
            if timeout <= 0:
                raise ValueError(f"VISIONQ_QUEUE_TIMEOUT_{kind.upper()}_S must be positive, got {timeout:g}")
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redacted_url(value) if name == "redis_url" else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The environment (or `env`), then the non-None `overrides` on top."""
        env = os.environ if env is None else env
        _refuse_unknown_variables(env)
        values: dict[str, Any] = {}
        for name, variable in _SCALAR_VARIABLES.items():
            if env.get(variable, "") != "":
                values[name] = env[variable]
        values["models"] = _models_from_env(env)
        if env.get("VISIONQ_MODELS_DIR"):
            try:
                explicit = parse_model_list(env.get("VISIONQ_MODELS", ""))
            except ValueError as exc:
                raise SettingsError(f"VISIONQ_MODELS: {exc}") from None
            values["named_models"] = {**named_models_in(env["VISIONQ_MODELS_DIR"]), **explicit}
        values["revisions"] = {
            role: env.get(f"VISIONQ_{role.upper()}_REVISION") or None for role in DEFAULT_MODELS
        }
        values["limits"] = _limits_from_env(env)
        values["time_limits_s"] = _per_kind(env, "VISIONQ_TIME_LIMIT_{}_S", DEFAULT_TIME_LIMITS_S, float)
        values["max_batch"] = _per_kind(env, "VISIONQ_MAX_BATCH_{}", DEFAULT_MAX_BATCH, int)
        values["queue_timeouts_s"] = _per_kind(env, "VISIONQ_QUEUE_TIMEOUT_{}_S", DEFAULT_QUEUE_TIMEOUTS_S, float)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = cls(**values)
        except ValidationError as exc:
            # An override given as None (Client(redis_url=None)) leaves the variable in charge: name that.
            raise SettingsError(_describe(exc, {k for k, v in overrides.items() if v is not None})) from None
        # A deadline must fall while the record exists: one set longer is refused, the built-in
        # default alone is cut to a shorter TTL (tasks/expiry.py).
        for kind in JobKind:
            variable = f"VISIONQ_QUEUE_TIMEOUT_{kind.name}_S"
            timeout = settings.queue_timeouts_s[kind.value]
            if variable in env and timeout > settings.job_ttl_s:
                raise SettingsError(f"{variable} {env[variable]} is longer than VISIONQ_JOB_TTL_S {settings.job_ttl_s}: "
                                    "a job's start deadline must fall while its record exists")
        return settings

    def with_models_dir(self, models_dir: str | Path) -> Settings:
        """Every model read from a folder laid out like `visionq models tiny DIR`."""
        named = {**self.named_models, **named_models_in(models_dir)}
        return self.model_copy(update={"models": models_in(models_dir), "revisions": {}, "named_models": named})

    def model_for(self, role: str) -> tuple[str, str | None]:
        return self.models[role], self.revisions.get(role)

    def time_limit_s(self, kind: JobKind) -> float:
        return self.time_limits_s[kind.value]

    def queue_timeout_s(self, kind: JobKind) -> float:
        return self.queue_timeouts_s[kind.value]


def models_in(models_dir: str | Path) -> dict[str, str]:
    """Role -> model folder inside a directory laid out like `visionq models tiny DIR`."""
    root = Path(models_dir).resolve()
    return {role: str(root / MODEL_DIR_NAMES[role]) for role in DEFAULT_MODELS}


def named_models_in(models_dir: str | Path) -> dict[str, ModelRef]:
    """The catalogue's other models (not the kind defaults) in a `visionq models tiny DIR` folder."""
    root = Path(models_dir).resolve()
    defaults = set(ROLE_MODELS.values())
    return {e.full_name: ModelRef(str(root / e.folder)) for e in CATALOGUE if e.full_name not in defaults}


def redacted_url(url: str) -> str:
    """The URL without its password, for logs and terminals: redis://user:***@host:6379/0 (each
    part of a `;`-separated Sentinel URL alike)."""
    if is_sentinel(url) and ";" in url:
        return ";".join(redacted_url(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


# Field -> variable, for the fields that are one variable each.
_SCALAR_VARIABLES: dict[str, str] = {
    name: f"VISIONQ_{name.upper()}"
    for name in Settings.model_fields
    if name not in ("models", "revisions", "limits", "time_limits_s", "max_batch", "queue_timeouts_s")
}
_SCALAR_VARIABLES["visibility_timeout_s"] = "VISIONQ_VISIBILITY_TIMEOUT"
_SCALAR_VARIABLES["named_models"] = "VISIONQ_MODELS"


def known_variables() -> set[str]:
    known = set(_SCALAR_VARIABLES.values()) | OTHER_VARIABLES | {"VISIONQ_MODELS_DIR"}
    for role in DEFAULT_MODELS:
        known |= {f"VISIONQ_{role.upper()}_MODEL", f"VISIONQ_{role.upper()}_REVISION"}
    for kind in JobKind:
        known |= {f"VISIONQ_TIME_LIMIT_{kind.name}_S", f"VISIONQ_MAX_BATCH_{kind.name}",
                  f"VISIONQ_QUEUE_TIMEOUT_{kind.name}_S"}
    known |= {f"VISIONQ_{f.name.upper()}" for f in dataclasses.fields(Limits)}
    return known


def _refuse_unknown_variables(env: Mapping[str, str]) -> None:
    known = known_variables()
    for variable in sorted(env):
        if variable.startswith("VISIONQ_") and variable not in known:
            close = difflib.get_close_matches(variable, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see docs/configuration.md"
            raise SettingsError(f"unknown setting {variable}{hint}")


def _models_from_env(env: Mapping[str, str]) -> dict[str, str]:
    models_dir = env.get("VISIONQ_MODELS_DIR")
    models = models_in(models_dir) if models_dir else dict(DEFAULT_MODELS)
    for role in DEFAULT_MODELS:
        explicit = env.get(f"VISIONQ_{role.upper()}_MODEL")
        if explicit:
            models[role] = explicit
    return models


def _convert(variable: str, text: str, type_: Any) -> Any:
    try:
        value = type_(text)
    except ValueError:
        raise SettingsError(f"{variable}={text!r} is not a valid {type_.__name__}") from None
    if not math.isfinite(value):  # float("inf"), float("nan")
        raise SettingsError(f"{variable}={text!r} must be a finite number")
    return value


def _per_kind(env: Mapping[str, str], pattern: str, defaults: dict[str, Any], type_: Any) -> dict[str, Any]:
    values = dict(defaults)
    for kind in defaults:
        variable = pattern.format(kind.upper())
        if env.get(variable):
            values[kind] = _convert(variable, env[variable], type_)
    return values


def _limits_from_env(env: Mapping[str, str]) -> Limits:
    overrides = {}
    for f in dataclasses.fields(Limits):
        variable = f"VISIONQ_{f.name.upper()}"
        if env.get(variable):
            if f.type not in ("int", "float"):
                raise SettingsError(f"{variable} cannot be set from the environment")
            value = _convert(variable, env[variable], int if f.type == "int" else float)
            if value <= 0:
                raise SettingsError(f"{variable}={env[variable]!r} must be positive")
            overrides[f.name] = value
    limits = Limits(**overrides)
    if limits.min_side > limits.max_side:  # every generate job would be refused
        raise SettingsError(f"VISIONQ_MIN_SIDE {limits.min_side} is above VISIONQ_MAX_SIDE {limits.max_side}")
    return limits


def _describe(exc: ValidationError, explicit: set[str]) -> str:
    """Pydantic's errors, each named by the variable (or argument) it came from."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = field if field in explicit else _SCALAR_VARIABLES.get(field, field or "settings")
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        secret = field in ("webhook_secret", "redis_url", "redis_sentinel_password")  # the message says what is wrong without it
        shown = "" if secret or isinstance(given, (dict, AllowList, BucketAllowList)) else f" (got {given!r})"
        lines.append(f"{name}: {message}{shown}" if field else message)
    return "; ".join(lines)
