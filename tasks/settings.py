"""Configuration, read from the environment in this one place and passed down.

Explicit arguments win over the environment (``Settings.from_env(redis_url=...)``).
S3 credentials and endpoint are *not* read here: boto3 reads its own standard
variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), so every S3-compatible
store configures exactly as it does for the AWS CLI.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from tasks.kinds import JobKind
from tasks.limits import Limits

DAY_S = 24 * 3600
MAX_PRESIGN_EXPIRY_S = 7 * DAY_S  # S3 refuses SigV4 URLs valid longer than 7 days

# Public Hugging Face ids; any of them can be replaced by a local folder.
DEFAULT_MODELS: dict[str, str] = {
    "caption": "Salesforce/blip-image-captioning-base",
    "segment": "CIDAS/clipseg-rd64-refined",  # masks for text labels
    "semantic": "nvidia/segformer-b0-finetuned-ade-512-512",  # segment without labels
    "generate": "stabilityai/sd-turbo",
}
# Sub-folders of a models directory (what `visionq models tiny DIR` writes).
MODEL_DIR_NAMES: dict[str, str] = {
    "caption": "caption",
    "segment": "segment-prompted",
    "semantic": "segment-semantic",
    "generate": "generate",
}

# Micro-batching: how many compatible jobs of a kind may share one forward pass.
# Generation batches little on GPUs already busy with one large image; off by default.
DEFAULT_MAX_BATCH: dict[str, int] = {"caption": 8, "segment": 8, "generate": 1}

# Per-kind wall-clock limits; the visibility timeout must exceed the longest.
DEFAULT_TIME_LIMITS_S: dict[str, float] = {"caption": 120.0, "segment": 120.0, "generate": 600.0}


def _default_storage_url() -> str:
    return (Path.home() / ".visionq" / "storage").as_uri()


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = field(default_factory=_default_storage_url)
    redis_prefix: str = "visionq"  # every Redis key of ours starts with it
    job_ttl_s: int = 7 * DAY_S
    visibility_timeout_s: int = 3600
    presign_expiry_s: int = DAY_S
    png_compress_level: int = 1  # level 6 costs ~4x the encode time for 15-40 % smaller files
    models: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    revisions: Mapping[str, str | None] = field(default_factory=dict)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    torch_threads: int | None = None
    fetch_allow: str = ""  # CIDRs/hosts that image URLs may reach despite the SSRF guard
    webhook_secret: str | None = None  # whsec_<base64>; a job may bring its own
    webhook_allow: str = ""  # CIDRs/hosts webhooks may reach despite the SSRF guard
    webhook_schedule: str = "0,5,300,1800,7200,18000,36000,36000"  # seconds before each attempt
    webhook_timeout_s: float = 10.0  # per attempt
    limits: Limits = field(default_factory=Limits)
    time_limits_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIME_LIMITS_S))
    max_batch: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_BATCH))
    gpu_memory_fraction: float | None = None  # cap of this worker's share of its GPU (several per GPU)
    max_wait_ms: float = 5.0  # how long a batch waits to fill once its first job arrived

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, variable, convert in _ENV_FIELDS:
            if env.get(variable, "") != "":
                values[name] = convert(env[variable])
        values["models"] = _models_from_env(env)
        values["revisions"] = {
            role: env.get(f"VISIONQ_{role.upper()}_REVISION") or None for role in DEFAULT_MODELS
        }
        values["limits"] = _limits_from_env(env)
        values["time_limits_s"] = {
            kind: float(env.get(f"VISIONQ_TIME_LIMIT_{kind.upper()}_S") or default)
            for kind, default in DEFAULT_TIME_LIMITS_S.items()
        }
        values["max_batch"] = {
            kind: int(env.get(f"VISIONQ_MAX_BATCH_{kind.upper()}") or default)
            for kind, default in DEFAULT_MAX_BATCH.items()
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def with_models_dir(self, models_dir: str | Path) -> Settings:
        """Every model read from a folder laid out like `visionq models tiny DIR`."""
        return replace(self, models=models_in(models_dir), revisions={})

    def check(self) -> None:
        if not 0 < self.presign_expiry_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(
                f"VISIONQ_PRESIGN_EXPIRY_S {self.presign_expiry_s} must be within 1..{MAX_PRESIGN_EXPIRY_S}"
            )
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError(f"VISIONQ_PNG_COMPRESS_LEVEL {self.png_compress_level} must be 0..9")
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(f"VISIONQ_GPU_MEMORY_FRACTION {self.gpu_memory_fraction} must be in (0, 1]")
        if any(n < 1 for n in self.max_batch.values()):
            raise ValueError(f"VISIONQ_MAX_BATCH_<KIND> must be at least 1, got {dict(self.max_batch)}")
        if self.job_ttl_s <= 0 or self.visibility_timeout_s <= 0:
            raise ValueError("VISIONQ_JOB_TTL_S and VISIONQ_VISIBILITY_TIMEOUT must be positive")
        if not self.storage_url.startswith(("s3://", "file://")):
            raise ValueError(
                f"VISIONQ_STORAGE_URL {self.storage_url!r} must be s3://bucket/prefix or file:///dir"
            )

    def model_for(self, role: str) -> tuple[str, str | None]:
        return self.models[role], self.revisions.get(role)

    def time_limit_s(self, kind: JobKind) -> float:
        return self.time_limits_s[kind.value]


def models_in(models_dir: str | Path) -> dict[str, str]:
    """Role -> model folder inside a directory laid out like `visionq models tiny DIR`."""
    root = Path(models_dir).resolve()
    return {role: str(root / MODEL_DIR_NAMES[role]) for role in DEFAULT_MODELS}


def _models_from_env(env: Mapping[str, str]) -> dict[str, str]:
    models_dir = env.get("VISIONQ_MODELS_DIR")
    models = models_in(models_dir) if models_dir else dict(DEFAULT_MODELS)
    for role in DEFAULT_MODELS:
        explicit = env.get(f"VISIONQ_{role.upper()}_MODEL")
        if explicit:
            models[role] = explicit
    return models


def _limits_from_env(env: Mapping[str, str]) -> Limits:
    overrides = {}
    for f in fields(Limits):
        variable = f"VISIONQ_{f.name.upper()}"
        if env.get(variable) and f.type in ("int", "float"):
            overrides[f.name] = (int if f.type == "int" else float)(env[variable])
    return Limits(**overrides)


_ENV_FIELDS: list[tuple[str, str, Any]] = [
    ("redis_url", "VISIONQ_REDIS_URL", str),
    ("storage_url", "VISIONQ_STORAGE_URL", str),
    ("redis_prefix", "VISIONQ_REDIS_PREFIX", str),
    ("job_ttl_s", "VISIONQ_JOB_TTL_S", int),
    ("visibility_timeout_s", "VISIONQ_VISIBILITY_TIMEOUT", int),
    ("presign_expiry_s", "VISIONQ_PRESIGN_EXPIRY_S", int),
    ("png_compress_level", "VISIONQ_PNG_COMPRESS_LEVEL", int),
    ("device", "VISIONQ_DEVICE", str),
    ("torch_threads", "VISIONQ_TORCH_THREADS", int),
    ("fetch_allow", "VISIONQ_FETCH_ALLOW", str),
    ("max_wait_ms", "VISIONQ_MAX_WAIT_MS", float),
    ("gpu_memory_fraction", "VISIONQ_GPU_MEMORY_FRACTION", float),
    ("webhook_secret", "VISIONQ_WEBHOOK_SECRET", str),
    ("webhook_allow", "VISIONQ_WEBHOOK_ALLOW", str),
    ("webhook_schedule", "VISIONQ_WEBHOOK_SCHEDULE", str),
    ("webhook_timeout_s", "VISIONQ_WEBHOOK_TIMEOUT_S", float),
]
