"""One Redis for every process, by its address or through Redis Sentinel.

`VISIONQ_REDIS_URL` is a `redis://`, `rediss://` or `unix://` URL, or Celery's and kombu's
Sentinel form: `sentinel://[:password@]host:port[;sentinel://host:port...][/db][?socket_timeout=S]`,
the sentinels to ask, separated by `;`. `VISIONQ_REDIS_SENTINEL_MASTER` names the primary they
monitor (`mymaster` by default). The password, when given, is the primary's; the sentinels
are asked with `VISIONQ_REDIS_SENTINEL_PASSWORD` when set (sentinels with `requirepass`, as
the Bitnami chart's are by default), else without one. Every client then talks to whichever server Sentinel reports as
primary, and finds the new one after a failover (redis-py's `SentinelConnectionPool`; kombu's
`sentinel` transport for Celery's messages).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.retry
import redis.sentinel

if TYPE_CHECKING:
    from tasks.settings import Settings

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
# A connect that has not been answered in this long goes to an address that drops packets (a
# failed-over host, a firewall): the kernel's own limit is ~2 minutes, a CLI or a wait hung that
# long. A URL's `?socket_connect_timeout=` wins.
CONNECT_TIMEOUT_S = 10.0
# An answer not read in this long comes from a Redis that stopped answering (frozen, a network
# that drops packets): the call raises TimeoutError instead of hanging a submit, a gateway thread
# or a worker's transition (which sends it again). redis-py 8's default; 5 to 7 wait forever. A
# URL's `?socket_timeout=` wins. Pub/sub reads pass their own timeout; kombu's BRPOP (Celery's
# connections) sets its own.
READ_TIMEOUT_S = 5.0
# What a Sentinel URL's `?` may set, as a redis:// URL's query does: for the sentinels and the primary.
SENTINEL_URL_OPTIONS = ("socket_connect_timeout", "socket_timeout")


@dataclass(frozen=True)
class SentinelAddress:
    sentinels: list[tuple[str, int]]
    db: int
    password: str | None
    username: str | None
    options: dict[str, float]  # SENTINEL_URL_OPTIONS the URL's query sets


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The sentinels, database and primary's credentials of a `sentinel://` URL; ValueError
    naming what is wrong (never the password)."""
    sentinels: list[tuple[str, int]] = []
    dbs: set[int] = set()
    credentials: set[tuple[str | None, str]] = set()
    queries: set[tuple[tuple[str, float], ...]] = set()
    for part in url.split(";"):
        parts = urlsplit(part)
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
            raise ValueError("each part of a Sentinel URL must read sentinel://host:port, separated by ';'")
        try:
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"sentinel {parts.hostname}: the port must be a number") from None
        sentinels.append((parts.hostname, port))
        if parts.password is not None:
            credentials.add((unquote(parts.username) if parts.username else None, unquote(parts.password)))
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"a Sentinel URL's path is a database number, got {path!r}")
            dbs.add(int(path))
        if parts.query:
            queries.add(tuple(sorted(_sentinel_options(parts.query).items())))
    # kombu reads each part on its own (the one it connects through): parts that disagree would
    # send Celery's messages and the job records to different databases or credentials.
    if len(dbs) > 1 or len(credentials) > 1 or len(queries) > 1:
        raise ValueError("the parts of a Sentinel URL name different databases, passwords or options; give them once")
    username, password = next(iter(credentials), (None, None))
    return SentinelAddress(sentinels, next(iter(dbs), 0), password, username, dict(next(iter(queries), ())))


def _sentinel_options(query: str) -> dict[str, float]:
    """A Sentinel URL's `?name=seconds&...`: only SENTINEL_URL_OPTIONS, whose values are seconds;
    anything else is refused rather than ignored (a `?ssl_...` would otherwise fall silently to plain text)."""
    options: dict[str, float] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in SENTINEL_URL_OPTIONS:
            raise ValueError(f"a Sentinel URL takes only {' and '.join(SENTINEL_URL_OPTIONS)} after '?', "
                             f"got {name[:40]!r}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not 0 < seconds < float("inf"):
            raise ValueError(f"a Sentinel URL's {name} is a number of seconds above 0, got {value[:40]!r}")
        options[name] = seconds
    return options


def kombu_sentinel_url(url: str) -> str:
    """The Sentinel URL with the primary's credentials and database on every part, as kombu reads
    it: kombu takes them from the part it connects through, and moves to the next part when one
    fails (during a failover), so a password given only on the first part would be lost then."""
    address = parse_sentinel_url(url)
    userinfo = ""
    if address.password is not None:
        userinfo = f"{quote(address.username or '', safe='')}:{quote(address.password, safe='')}@"
    return ";".join(f"{SENTINEL_SCHEME}://{userinfo}{host}:{port}/{address.db}" for host, port in address.sentinels)


def url_password(url: str) -> str | None:
    """The password a Redis URL carries (a Sentinel URL: the primary's), for log redaction."""
    if is_sentinel(url):
        return parse_sentinel_url(url).password
    password = urlsplit(url).password
    return None if password is None else unquote(password)


def client_for(settings: Settings, **kwargs: Any) -> redis.Redis:
    """The Redis of a process's settings: `VISIONQ_REDIS_URL`, through its Sentinel master if it names sentinels."""
    return connect(settings.redis_url, settings.redis_sentinel_master, settings.redis_sentinel_password, **kwargs)


def async_client_for(settings: Settings, **kwargs: Any) -> redis.asyncio.Redis:
    """`client_for`, the asyncio client."""
    return connect_async(settings.redis_url, settings.redis_sentinel_master, settings.redis_sentinel_password,
                         **kwargs)


def connect(url: str, master: str, sentinel_password: str | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for `url` (keyword arguments: redis-py's connection options).

    It sends each command once (no redis-py Retry, whichever default the installed version has):
    a command whose answer is lost may have run, so it is for the caller to send it again
    (worker/outage.py `until_redis_answers`), to scripts made to notice a second run."""
    kwargs.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("socket_timeout", READ_TIMEOUT_S)
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    address = parse_sentinel_url(url)
    kwargs.update(address.options)  # the URL's win, as redis-py's from_url lets a redis:// URL's
    sentinel = redis.sentinel.Sentinel(address.sentinels, sentinel_kwargs=sentinel_kwargs(kwargs, sentinel_password))
    return sentinel.master_for(master, db=address.db, password=address.password, username=address.username,
                               **kwargs)


def connect_async(
    url: str, master: str, sentinel_password: str | None = None, **kwargs: Any,
) -> redis.asyncio.Redis:
    """The asyncio client for `url`, as `connect`."""
    kwargs.setdefault("retry", redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0))
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("socket_timeout", READ_TIMEOUT_S)
    if not is_sentinel(url):
        return redis.asyncio.Redis.from_url(url, **kwargs)
    address = parse_sentinel_url(url)
    kwargs.update(address.options)
    sentinel = redis.asyncio.sentinel.Sentinel(
        address.sentinels, sentinel_kwargs=sentinel_kwargs(kwargs, sentinel_password))
    return sentinel.master_for(master, db=address.db, password=address.password, username=address.username,
                               **kwargs)


def sentinel_kwargs(kwargs: dict[str, Any], password: str | None) -> dict[str, Any]:
    """The sentinels get the same timeouts as the primary (an unreachable sentinel must not hang a
    start-up check) and their own password, never the primary's."""
    chosen = {name: value for name, value in kwargs.items() if name.startswith("socket_")}
    return chosen if password is None else {**chosen, "password": password}
