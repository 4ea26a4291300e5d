"""Outbound HTTP through the SSRF guard: image fetches (GET) and webhook deliveries (POST).

Connections go to the addresses `tasks.ssrf` checked, never to a second DNS answer;
https verifies the certificate against the URL's host name; redirects are refused.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass

from tasks.errors import InvalidInput
from tasks.ssrf import AllowList, CheckedUrl, IPAddress, UrlRefused, checked_url

__all__ = ["PostResult", "fetch", "post"]

_CHUNK_BYTES = 64 * 1024
_REQUEST_HEADERS = {
    "User-Agent": "visionq",
    "Accept": "image/jpeg, image/png, image/webp, */*;q=0.1",
    # A compressed body would make the byte cap count the wrong bytes.
    "Accept-Encoding": "identity",
}


def fetch(
    url: str, *, max_bytes: int, timeout_s: float = 10.0, allow: AllowList = AllowList()
) -> tuple[bytes, str | None]:
    """GET `url` through the guard; return (body, Content-Type).

    Connects only to the checked addresses, sends the URL's own Host header and,
    for https, verifies the certificate against the URL's host name. A 3xx is
    refused, another non-2xx, a body over `max_bytes`, a timeout or a connection
    failure is InvalidInput. `timeout_s` bounds each connect and read, and the
    body download as a whole.
    """
    target = checked_url(url, allow)
    deadline = time.monotonic() + timeout_s
    connection = _connection(target, timeout_s)
    response: http.client.HTTPResponse | None = None
    try:
        connection.request("GET", target.path, headers=_REQUEST_HEADERS)
        response = connection.getresponse()
        _check_status(response, target.host)
        body = _read_capped(response, max_bytes, target.host, deadline)
        return body, response.getheader("Content-Type")
    except TimeoutError as exc:
        raise InvalidInput(f"fetching from {target.host!r} timed out after {timeout_s:g} s") from exc
    except ssl.SSLError as exc:
        raise InvalidInput(f"TLS with {target.host!r} failed: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise InvalidInput(f"fetching from {target.host!r} failed: {exc!r}") from exc
    finally:
        if response is not None:
            response.close()
        connection.close()


@dataclass(frozen=True)
class PostResult:
    status: int | None  # None: no HTTP answer (refused, connection error, timeout)
    error: str | None
    retry_after_s: float | None  # the receiver's Retry-After, in seconds
    latency_ms: float


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout_s: float = 10.0,
    allow: AllowList = AllowList(),
) -> PostResult:
    """POST `body` through the guard (webhook deliveries). Never raises for the
    receiver's behaviour: every outcome is a PostResult, a refused URL included
    (raised as UrlRefused, since it is not worth retrying)."""
    target = checked_url(url, allow)
    started = time.monotonic()
    connection = _connection(target, timeout_s)

    def result(status: int | None, error: str | None, retry_after: float | None = None) -> PostResult:
        return PostResult(status, error, retry_after, round((time.monotonic() - started) * 1000, 3))

    try:
        connection.request("POST", target.path, body=body, headers={
            "User-Agent": "visionq-webhooks", "Content-Type": "application/json", **headers,
        })
        response = connection.getresponse()
        response.read(64 * 1024)  # the receiver's answer is not needed beyond its status
        error = None if 200 <= response.status < 300 else f"HTTP {response.status} {response.reason}"
        if 300 <= response.status < 400:
            error = f"HTTP {response.status}: redirects are not followed"
        return result(response.status, error, _retry_after_s(response.getheader("Retry-After")))
    except TimeoutError:
        return result(None, f"timed out after {timeout_s:g} s")
    except (OSError, http.client.HTTPException) as exc:
        return result(None, f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _connection(target: CheckedUrl, timeout_s: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target.host, target.port, addresses=target.addresses, timeout=timeout_s)
    return _PinnedHTTPConnection(target.host, target.port, addresses=target.addresses, timeout=timeout_s)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to addresses checked beforehand; the host name is never resolved again."""

    def __init__(self, host: str, port: int, *, addresses: list[IPAddress], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = _connect_first(self._addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a checked address, with SNI and certificate checks against the URL's host."""

    def __init__(self, host: str, port: int, *, addresses: list[IPAddress], timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._addresses = addresses

    def connect(self) -> None:
        sock = _connect_first(self._addresses, self.port, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _connect_first(addresses: list[IPAddress], port: int, timeout: float) -> socket.socket:
    """A TCP connection to the first address that answers, like socket.create_connection
    but without its getaddrinfo call."""
    error: OSError = OSError(f"no address to connect to on port {port}")
    for address in addresses:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((str(address), port))
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _check_status(response: http.client.HTTPResponse, host: str) -> None:
    status = response.status
    if 300 <= status < 400:
        location = (response.getheader("Location") or "")[:200]
        raise UrlRefused(f"redirects are not followed (HTTP {status} to {location!r})", host)
    if not 200 <= status < 300:
        raise InvalidInput(f"fetching from {host!r} answered HTTP {status} {response.reason}")


def _read_capped(response: http.client.HTTPResponse, max_bytes: int, host: str, deadline: float) -> bytes:
    """The body, refused as soon as it is known to exceed `max_bytes`."""
    if response.length is not None and response.length > max_bytes:
        raise InvalidInput(
            f"the body from {host!r} declares {response.length} bytes, over the {max_bytes}-byte limit"
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
            raise InvalidInput(f"the body from {host!r} is over the {max_bytes}-byte limit")
        chunks.append(chunk)
        # Each read has its own timeout; this bounds a server that drips the body slowly.
        if time.monotonic() > deadline:
            raise TimeoutError
    if response.length:  # http.client leaves a body cut short of Content-Length to us
        raise InvalidInput(f"the body from {host!r} ended {response.length} bytes short of its Content-Length")
    return b"".join(chunks)
