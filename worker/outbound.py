"""Outbound HTTP through the SSRF guard: image fetches (GET) and webhook deliveries (POST).

Connections go to the addresses `tasks.ssrf` checked, never to a second DNS answer;
https verifies the certificate against the URL's host name; redirects are refused.
Every exchange has one wall-clock deadline covering connect, TLS, headers and body.
"""
from __future__ import annotations

import http.client
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from tasks.errors import InvalidInput
from tasks.ssrf import WEB_PORTS, AllowList, CheckedUrl, IPAddress, UrlRefused, checked_url
from tasks.webhooks import clean_text, mask_url

__all__ = ["PostResult", "fetch", "post"]

_CHUNK_BYTES = 64 * 1024
_REQUEST_HEADERS = {
    "User-Agent": "visionq",
    "Accept": "image/jpeg, image/png, image/webp, */*;q=0.1",
    # A compressed body would make the byte cap count the wrong bytes.
    "Accept-Encoding": "identity",
}


def fetch(
    url: str, *, max_bytes: int, timeout_s: float = 15.0, allow: AllowList = AllowList()
) -> tuple[bytes, str | None]:
    """GET `url` through the guard; return (body, Content-Type).

    Connects only to the checked addresses, sends the URL's own Host header and,
    for https, verifies the certificate against the URL's host name. A 3xx is
    refused; another non-2xx, a body over `max_bytes`, a connection failure or an
    exchange not finished within `timeout_s` (VISIONQ_FETCH_TIMEOUT_S) is InvalidInput.
    """
    target = checked_url(url, allow, ports=WEB_PORTS)
    shown = mask_url(url)
    with _Deadline(timeout_s) as deadline:
        connection = _connection(target, deadline)
        response: http.client.HTTPResponse | None = None
        try:
            connection.request("GET", target.path, headers=_REQUEST_HEADERS)
            response = connection.getresponse()
            _check_status(response, target.host, shown)
            body = _read_capped(response, max_bytes, shown)
            deadline.check()  # a body cut short by the deadline can look complete
            return body, response.getheader("Content-Type")
        except (OSError, http.client.HTTPException, InvalidInput) as exc:
            if deadline.expired or isinstance(exc, TimeoutError):
                raise InvalidInput(
                    f"fetching {shown!r} did not finish within the {timeout_s:g} s limit"
                ) from exc
            if isinstance(exc, InvalidInput):
                raise
            if isinstance(exc, ssl.SSLError):
                raise InvalidInput(f"TLS with {shown!r} failed: {clean_text(str(exc))}") from exc
            # One message for refused, reset and non-HTTP answers alike: the error
            # must not tell a producer which ports are open behind the address.
            raise InvalidInput(f"fetching {shown!r} failed: {NO_HTTP_ANSWER}") from exc
        finally:
            if response is not None:
                response.close()
            connection.close()


NO_HTTP_ANSWER = "no HTTP answer (the connection was refused or reset, or the server does not speak HTTP)"


@dataclass(frozen=True)
class PostResult:
    status: int | None  # None: no HTTP answer (refused, connection error, timeout)
    error: str | None  # safe to print: control characters stripped
    retry_after_s: float | None  # the receiver's Retry-After, in seconds (may be huge)
    latency_ms: float


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout_s: float = 10.0,
    allow: AllowList = AllowList(),
) -> PostResult:
    """POST `body` through the guard (webhook deliveries). Every outcome of the
    receiver's behaviour is a PostResult; an answer not complete within `timeout_s`
    (connect to last byte) is a timeout. A refused URL raises UrlRefused, since it is
    not worth retrying."""
    target = checked_url(url, allow)
    started = time.monotonic()

    def result(status: int | None, error: str | None, retry_after: float | None = None) -> PostResult:
        text = clean_text(error) if error is not None else None
        return PostResult(status, text, retry_after, round((time.monotonic() - started) * 1000, 3))

    with _Deadline(timeout_s) as deadline:
        connection = _connection(target, deadline)
        try:
            connection.request("POST", target.path, body=body, headers={
                "User-Agent": "visionq-webhooks", "Content-Type": "application/json", **headers,
            })
            response = connection.getresponse()
            response.read(64 * 1024)  # the receiver's answer is not needed beyond its status
            deadline.check()  # headers cut short by the deadline can look complete
            error = None if 200 <= response.status < 300 else f"HTTP {response.status} {response.reason}"
            if 300 <= response.status < 400:
                error = f"HTTP {response.status}: redirects are not followed"
            return result(response.status, error, _retry_after_s(response.getheader("Retry-After")))
        except (OSError, http.client.HTTPException) as exc:
            if deadline.expired or isinstance(exc, TimeoutError):
                return result(None, f"no complete answer within the {timeout_s:g} s deadline")
            return result(None, f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or HTTP-date); None when absent
    or unreadable. Not capped here: the retry schedule caps it (tasks.webhooks)."""
    if not value:
        return None
    value = value.strip()[:100]
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None if math.isnan(seconds) else max(0.0, seconds)


class _Deadline:
    """One wall-clock limit on a whole exchange.

    Socket timeouts bound each read, not the exchange: a server that sends one byte
    just before each expires keeps a connection alive for hours. At the deadline
    this shuts the socket down, which wakes whatever read or write is blocked on it,
    TLS included (shutdown acts on the socket, shared by the duplicate descriptor
    kept here). Callers check `expired`: what a cut connection returned is not an answer.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._watched:
                sock.close()
            self._watched.clear()

    def remaining_s(self) -> float:
        """Seconds left; TimeoutError when none are."""
        left = self._end - time.monotonic()
        if left <= 0 or self.expired:
            raise TimeoutError(f"deadline of {self.seconds:g} s passed")
        return left

    def check(self) -> None:
        self.remaining_s()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._watched.append(sock.dup())
            if self.expired:
                _shut(self._watched[-1])

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._watched:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer


def _connection(target: CheckedUrl, deadline: _Deadline) -> http.client.HTTPConnection:
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    return kind(target.host, target.port, addresses=target.addresses, deadline=deadline)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to addresses checked beforehand; the host name is never resolved again."""

    def __init__(self, host: str, port: int, *, addresses: list[IPAddress], deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.seconds)
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = _connect_first(self._addresses, self.port, self._deadline)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a checked address, with SNI and certificate checks against the URL's host."""

    def __init__(self, host: str, port: int, *, addresses: list[IPAddress], deadline: _Deadline) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=deadline.seconds, context=self._tls)
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        sock = _connect_first(self._addresses, self.port, self._deadline)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _connect_first(addresses: list[IPAddress], port: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first address that answers, like socket.create_connection
    but without its getaddrinfo call; watched by the deadline from then on."""
    error: OSError = OSError(f"no address to connect to on port {port}")
    for address in addresses:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.remaining_s())
            sock.connect((str(address), port))
            deadline.watch(sock)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _check_status(response: http.client.HTTPResponse, host: str, shown: str) -> None:
    status = response.status
    if 300 <= status < 400:
        location = clean_text((response.getheader("Location") or "")[:200])
        raise UrlRefused(f"redirects are not followed (HTTP {status} to {location!r})", host)
    if not 200 <= status < 300:
        raise InvalidInput(f"fetching {shown!r} answered HTTP {status} {clean_text(response.reason)}")


def _read_capped(response: http.client.HTTPResponse, max_bytes: int, shown: str) -> bytes:
    """The body, refused as soon as it is known to exceed `max_bytes`."""
    if response.length is not None and response.length > max_bytes:
        raise InvalidInput(
            f"the body from {shown!r} declares {response.length} bytes, over the {max_bytes}-byte limit"
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        # One more byte than allowed is enough to know the body is too large.
        chunk = response.read1(min(_CHUNK_BYTES, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise InvalidInput(f"the body from {shown!r} is over the {max_bytes}-byte limit")
        chunks.append(chunk)
    if response.length:  # http.client leaves a body cut short of Content-Length to us
        raise InvalidInput(f"the body from {shown!r} ended {response.length} bytes short of its Content-Length")
    return b"".join(chunks)
