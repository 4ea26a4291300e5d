"""Can this process reach Redis and storage? Asked once at start, before minutes of model loading.

Each check makes one short attempt (no retry loop): at start a wrong address
should say so in seconds, with the address, rather than be waited out.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import redis

from tasks.redis_connect import connect, is_sentinel, parse_sentinel_url
from tasks.settings import Settings, redacted_url

CONNECT_TIMEOUT_S = 5.0


class Unreachable(RuntimeError):
    """A service this process needs cannot be reached or used; the message names it and its address."""


def check_services(settings: Settings) -> None:
    check_redis(settings.redis_url, settings.redis_sentinel_master, settings.redis_sentinel_password)
    check_storage(settings.storage_url)


def check_redis(url: str, sentinel_master: str = "mymaster", sentinel_password: str | None = None) -> None:
    if is_sentinel(url):
        _check_sentinels(url, sentinel_master, sentinel_password)
    client = connect(url, sentinel_master, sentinel_password,
                     socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unreachable(f"cannot reach Redis at {redacted_url(url)} (VISIONQ_REDIS_URL): {exc}") from None
    finally:
        client.close()


def _check_sentinels(url: str, master: str, password: str | None) -> None:
    """Ask each sentinel for the primary: a refusal then names its cause (a missing or wrong
    sentinel password, an unknown primary name) where redis-py says only "No master found"."""
    reasons = []
    for host, port in parse_sentinel_url(url).sentinels:
        sentinel = redis.Redis(host=host, port=port, password=password,
                               socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)
        try:
            if sentinel.sentinel_get_master_addr_by_name(master):
                return
            reasons.append(f"{host}:{port} monitors no primary named {master!r} (VISIONQ_REDIS_SENTINEL_MASTER)")
        except redis.AuthenticationError:
            reasons.append(f"{host}:{port} refused " + (
                "VISIONQ_REDIS_SENTINEL_PASSWORD" if password else
                "to answer without a password: set VISIONQ_REDIS_SENTINEL_PASSWORD to the sentinels' own "
                "(the URL's password is the primary's)"))
        except redis.RedisError as exc:
            reasons.append(f"{host}:{port}: {exc}")
        finally:
            sentinel.close()
    raise Unreachable(f"cannot reach Redis through the sentinels of {redacted_url(url)} (VISIONQ_REDIS_URL): "
                      + "; ".join(reasons))


def check_storage(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        _check_bucket(parsed.netloc)
    elif parsed.scheme == "file":
        _check_folder(Path(unquote(parsed.path)))


def _check_bucket(bucket: str) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    # The same standard variables (AWS_ENDPOINT_URL, credentials, region) as the storage client.
    client = boto3.client("s3", config=Config(
        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=CONNECT_TIMEOUT_S, retries={"total_max_attempts": 1},
    ))
    endpoint = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise Unreachable(f"storage bucket {bucket!r} does not exist at {endpoint} (VISIONQ_STORAGE_URL)") from None
        raise Unreachable(f"storage bucket {bucket!r} at {endpoint} refused access: {code} {exc}") from None
    except BotoCoreError as exc:
        raise Unreachable(f"cannot reach the S3 endpoint {endpoint} (AWS_ENDPOINT_URL): {exc}") from None


def _check_folder(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".visionq-check-"):
            pass
    except OSError as exc:
        raise Unreachable(f"storage folder {root} is not writable (VISIONQ_STORAGE_URL): {exc}") from None
