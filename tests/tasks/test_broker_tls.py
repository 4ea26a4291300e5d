"""rediss:// verifies the server's certificate on both channels: Celery's broker and the job store."""
from __future__ import annotations

import ssl

import pytest
import redis

from tasks.app import broker_ssl_options, make_celery
from tasks.settings import Settings


def broker_ssl(url: str) -> object:
    return make_celery(Settings.from_env({}, redis_url=url)).connection_for_write().ssl


def test_rediss_broker_verifies_the_certificate_by_default() -> None:
    # kombu alone would use {"ssl_cert_reqs": CERT_NONE} here.
    assert broker_ssl("rediss://:secret@redis.example:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_plain_redis_broker_has_no_tls() -> None:
    assert not broker_ssl("redis://127.0.0.1:6379/0")


def test_the_url_may_relax_or_configure_verification_explicitly() -> None:
    assert broker_ssl_options("rediss://h:6380/0?ssl_cert_reqs=none") == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert broker_ssl_options("rediss://h:6380/0?ssl_cert_reqs=CERT_OPTIONAL&ssl_ca_certs=/etc/ca.pem") == {
        "ssl_cert_reqs": ssl.CERT_OPTIONAL, "ssl_ca_certs": "/etc/ca.pem",
    }
    with pytest.raises(ValueError, match="ssl_cert_reqs='maybe'"):
        broker_ssl_options("rediss://h:6380/0?ssl_cert_reqs=maybe")


def test_job_store_client_verifies_the_certificate() -> None:
    # The job store, heartbeats and the SDK build their clients with Redis.from_url.
    pool = redis.Redis.from_url("rediss://:secret@redis.example:6380/0").connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.check_hostname
