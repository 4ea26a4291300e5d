"""Settings are typed and checked once, at start, with the variable's name in every error."""
from __future__ import annotations

import pytest

from tasks.settings import DEFAULT_WEBHOOK_SCHEDULE_S, Settings, SettingsError, redacted_url
from tasks.ssrf import AllowList


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.webhook_schedule == DEFAULT_WEBHOOK_SCHEDULE_S
    assert settings.fetch_allow == AllowList()


def test_values_are_parsed_once_into_their_types() -> None:
    settings = Settings.from_env({
        "VISIONQ_WEBHOOK_SCHEDULE": "0, 1.5,3",
        "VISIONQ_FETCH_ALLOW": "127.0.0.1, localhost",
        "VISIONQ_JOB_TTL_S": "60",
        "VISIONQ_VISIBILITY_TIMEOUT": "900",
        "VISIONQ_MAX_BATCH_CAPTION": "4",
        "VISIONQ_TIME_LIMIT_GENERATE_S": "30",
        "VISIONQ_MAX_IMAGE_PIXELS": "1000000",
    })
    assert settings.webhook_schedule == (0.0, 1.5, 3.0)
    assert settings.fetch_allow.allows_host("localhost")
    assert (settings.job_ttl_s, settings.visibility_timeout_s) == (60, 900)
    assert settings.max_batch["caption"] == 4
    assert settings.time_limits_s["generate"] == 30.0
    assert settings.limits.max_image_pixels == 1_000_000


def test_explicit_arguments_win() -> None:
    settings = Settings.from_env({"VISIONQ_REDIS_URL": "redis://a:1/0"}, redis_url="redis://b:2/0", device=None)
    assert settings.redis_url == "redis://b:2/0"
    assert settings.device == "auto"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VISIONQ_REDIS_ULR": "redis://x"}, "did you mean VISIONQ_REDIS_URL"),
        ({"VISIONQ_JOB_TTL_S": "a week"}, "VISIONQ_JOB_TTL_S"),
        ({"VISIONQ_JOB_TTL_S": "0"}, "VISIONQ_JOB_TTL_S"),
        ({"VISIONQ_WEBHOOK_SCHEDULE": "5,-1"}, "VISIONQ_WEBHOOK_SCHEDULE"),
        ({"VISIONQ_WEBHOOK_SCHEDULE": "5,soon"}, "VISIONQ_WEBHOOK_SCHEDULE"),
        ({"VISIONQ_WEBHOOK_SCHEDULE": "0,inf"}, "VISIONQ_WEBHOOK_SCHEDULE"),
        ({"VISIONQ_WEBHOOK_SECRET": "whsec_"}, "VISIONQ_WEBHOOK_SECRET"),
        ({"VISIONQ_WEBHOOK_SECRET": "whsec_YWJj"}, "VISIONQ_WEBHOOK_SECRET"),
        ({"VISIONQ_INPUT_BUCKETS": "bad bucket!"}, "VISIONQ_INPUT_BUCKETS"),
        ({"VISIONQ_WEBHOOK_TIMEOUT_S": "-1"}, "VISIONQ_WEBHOOK_TIMEOUT_S"),
        ({"VISIONQ_MAX_BATCH_SEGMENT": "0"}, "VISIONQ_MAX_BATCH_SEGMENT"),
        ({"VISIONQ_TIME_LIMIT_CAPTION_S": "soon"}, "VISIONQ_TIME_LIMIT_CAPTION_S"),
        ({"VISIONQ_PNG_COMPRESS_LEVEL": "12"}, "VISIONQ_PNG_COMPRESS_LEVEL"),
        ({"VISIONQ_PRESIGN_EXPIRY_S": str(8 * 24 * 3600)}, "VISIONQ_PRESIGN_EXPIRY_S"),
        ({"VISIONQ_GPU_MEMORY_FRACTION": "1.5"}, "VISIONQ_GPU_MEMORY_FRACTION"),
        ({"VISIONQ_STORAGE_URL": "http://bucket"}, "VISIONQ_STORAGE_URL"),
        ({"VISIONQ_REDIS_URL": "http://x"}, "VISIONQ_REDIS_URL"),
        ({"VISIONQ_DEVICE": "tpu"}, "VISIONQ_DEVICE"),
        ({"VISIONQ_FETCH_ALLOW": "not a host!"}, "VISIONQ_FETCH_ALLOW"),
        ({"VISIONQ_MAX_IMAGE_PIXELS": "many"}, "VISIONQ_MAX_IMAGE_PIXELS"),
        ({"VISIONQ_MAX_IMAGE_PIXELS": "-5"}, "VISIONQ_MAX_IMAGE_PIXELS"),
        # No number is infinite or not a number (an infinite batch wait froze a worker).
        ({"VISIONQ_MAX_WAIT_MS": "inf"}, "VISIONQ_MAX_WAIT_MS"),
        ({"VISIONQ_MAX_WAIT_MS": "1e30"}, "VISIONQ_MAX_WAIT_MS"),
        ({"VISIONQ_FETCH_TIMEOUT_S": "nan"}, "VISIONQ_FETCH_TIMEOUT_S"),
        ({"VISIONQ_QUEUE_TIMEOUT_CAPTION_S": "nan"}, "VISIONQ_QUEUE_TIMEOUT_CAPTION_S"),
        ({"VISIONQ_TIME_LIMIT_GENERATE_S": "inf"}, "VISIONQ_TIME_LIMIT_GENERATE_S"),
        ({"VISIONQ_MAX_GUIDANCE_SCALE": "nan"}, "VISIONQ_MAX_GUIDANCE_SCALE"),
        ({"VISIONQ_MAX_BATCH_CAPTION": "1000000"}, "VISIONQ_MAX_BATCH_CAPTION"),
        ({"VISIONQ_MIN_SIDE": "1000", "VISIONQ_MAX_SIDE": "512"}, "VISIONQ_MIN_SIDE 1000 is above VISIONQ_MAX_SIDE"),
    ],
)
def test_a_bad_setting_fails_at_start_naming_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match=named):  # as the SDK's Client() and the CLI call it
        Settings.from_env(env, redis_url=None, storage_url=None)


def test_secrets_stay_out_of_repr_and_errors() -> None:
    settings = Settings.from_env({
        "VISIONQ_REDIS_URL": "redis://app:hunter2@redis:6379/0",
        "VISIONQ_WEBHOOK_SECRET": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
    })
    shown = repr(settings) + str(settings)
    assert "hunter2" not in shown and "c2VjcmV0" not in shown
    assert "redis://app:***@redis:6379/0" in shown
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"VISIONQ_REDIS_URL": "http://app:hunter2@redis"})
    assert "hunter2" not in str(raised.value)


def test_redacted_url_keeps_urls_without_password() -> None:
    assert redacted_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redacted_url("rediss://:pw@h:1/0") == "rediss://:***@h:1/0"


def test_a_sentinel_url_names_its_sentinels_database_and_the_primarys_password() -> None:
    from tasks.messages import redis_db
    from tasks.redis_connect import parse_sentinel_url, url_password

    url = "sentinel://:s3cret@10.0.0.1:26379;sentinel://10.0.0.2;sentinel://10.0.0.3:26380/2"
    settings = Settings.from_env({"VISIONQ_REDIS_URL": url, "VISIONQ_REDIS_SENTINEL_MASTER": "cache-a"})
    assert settings.redis_sentinel_master == "cache-a"
    address = parse_sentinel_url(url)
    assert address.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)]
    assert (address.db, address.password, redis_db(url), url_password(url)) == (2, "s3cret", 2, "s3cret")
    shown = repr(settings)
    assert "s3cret" not in shown and "sentinel://:***@10.0.0.1:26379;sentinel://10.0.0.2" in shown
    for bad in ("sentinel://", "sentinel://h:1;redis://h:2", "sentinel://h:port", "sentinel://h:1/zero",
                "sentinel://h:1/1;sentinel://h:2/2", "sentinel://:a@h:1;sentinel://:b@h:2"):  # parts that disagree
        with pytest.raises(SettingsError, match="VISIONQ_REDIS_URL"):
            Settings.from_env({"VISIONQ_REDIS_URL": bad})
    # A ';' in a redis:// password is part of the password: never split, never shown.
    assert "pa;ss" not in repr(Settings.from_env({"VISIONQ_REDIS_URL": "redis://:pa;ss@h:6379/0"}))


def test_a_sentinel_urls_timeouts_reach_the_sentinels_the_primary_and_kombu() -> None:
    """As a redis:// URL's query does; any other option is refused, not ignored."""
    from tasks.app import make_celery
    from tasks.redis_connect import connect, parse_sentinel_url

    url = "sentinel://h1:26379?socket_connect_timeout=2.5&socket_timeout=30;sentinel://h2/1"
    assert parse_sentinel_url(url).options == {"socket_connect_timeout": 2.5, "socket_timeout": 30.0}
    client = connect(url, "cache-a")
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.5
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 30.0
    for sentinel in client.connection_pool.sentinel_manager.sentinels:
        assert sentinel.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.5
    options = make_celery(Settings.from_env({"VISIONQ_REDIS_URL": url})).conf.broker_transport_options
    assert options["socket_connect_timeout"] == 2.5 and options["sentinel_kwargs"]["socket_timeout"] == 30.0
    assert connect("sentinel://h1:26379", "m").connection_pool.connection_kwargs["socket_connect_timeout"] == 10
    for bad, said in (("sentinel://h:1?ssl=true", "takes only"), ("sentinel://h:1?socket_timeout=soon", "seconds"),
                      ("sentinel://h:1?socket_timeout=0", "seconds"), ("sentinel://h:1?socket_timeout=inf", "seconds"),
                      ("sentinel://h:1?socket_timeout=1;sentinel://h:2?socket_timeout=2", "different")):
        with pytest.raises(SettingsError, match=said):
            Settings.from_env({"VISIONQ_REDIS_URL": bad})


def test_celery_and_the_worker_take_kombus_sentinel_transport_for_a_sentinel_url() -> None:
    from tasks.app import make_celery
    from worker.broker import SENTINEL_TRANSPORT, TRANSPORT, transport_for

    settings = Settings.from_env({"VISIONQ_REDIS_URL": "sentinel://127.0.0.1:26379/0",
                                  "VISIONQ_REDIS_SENTINEL_MASTER": "cache-a"})
    assert make_celery(settings).conf.broker_transport_options["master_name"] == "cache-a"
    # kombu reads each part alone, and moves to the next when one fails: every part carries the
    # primary's password and the database, as the job store uses them.
    from kombu.utils.url import url_to_parts

    spread = Settings.from_env({"VISIONQ_REDIS_URL": "sentinel://:p%40ss@h1:26379;sentinel://h2/3"})
    parts = [url_to_parts(alt) for alt in make_celery(spread).connection_for_write().alt]
    assert [(p.hostname, p.port, p.password, p.path) for p in parts] == [
        ("h1", 26379, "p@ss", "3"), ("h2", 26379, "p@ss", "3")]
    assert "master_name" not in make_celery(Settings.from_env({})).conf.broker_transport_options
    assert transport_for(settings.redis_url) == SENTINEL_TRANSPORT
    assert transport_for("redis://127.0.0.1:6379/0") == TRANSPORT
