"""Log lines: plain text, or one JSON object per line (`VISIONQ_LOG_FORMAT=json`), never a secret.

JSON lines carry `ts`, `level`, `logger`, `message` and whatever the call site
passed as structured fields (a final job's `job_id`, `kind`, `status`,
`error_code` and durations), so a log pipeline can index them without parsing
text. Whatever the format, the values of the deployment's secrets (the webhook
secret, the Redis password, the S3 secret key and session token) are replaced by
`***` in every line, whoever wrote it (us, Celery, kombu, botocore).
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from tasks.redis_connect import url_password
from tasks.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_MIN_SECRET_CHARS = 6  # shorter values would mask ordinary words

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def secrets_of(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """The values that must never reach a log line."""
    password = url_password(settings.redis_url) or ""
    found = [settings.webhook_secret or "", password, quote(password, safe="")]  # as given, and as a URL spells it
    if settings.webhook_secret:
        found.append(settings.webhook_secret.removeprefix("whsec_"))
    found += [env.get(name, "") for name in SECRET_VARIABLES]
    return sorted({s for s in found if len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str], fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.secrets = list(secrets)

    def redact(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(line, default=str, ensure_ascii=False))


def configure_logging(settings: Settings, env: Mapping[str, str], level: int | str = logging.INFO) -> None:
    """Root logging to stderr in the configured format, with secrets masked."""
    secrets = secrets_of(settings, env)
    formatter: logging.Formatter = (
        JsonFormatter(secrets) if settings.log_format == "json" else _Redacting(secrets, TEXT_FORMAT)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings too become lines of this format, not raw stderr text
    control = logging.getLogger("celery.worker.control")
    if _no_result_backend_noise not in control.filters:
        control.addFilter(_no_result_backend_noise)


def _no_result_backend_noise(record: logging.LogRecord) -> bool:
    """Drops Celery's "Failed to mark task ... as revoked in backend: No result backend is
    configured", which its revoke logs for every task of an app without a result backend:
    visionq has none by design (the job record is the result; its revoke hook ends the job)."""
    return not (str(record.msg).startswith("Failed to mark task") and "No result backend" in record.getMessage())
