"""The SSRF guard: address rules on literal and resolved hosts, and fetch against real
loopback servers (loopback is reached through an explicit AllowList, as in deployments)."""
from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tasks.errors import ErrorCode, InvalidInput
from worker.outbound import NO_HTTP_ANSWER, fetch
from tasks.ssrf import WEB_PORTS, AllowList, BucketAllowList, UrlRefused, check_url

LOOPBACK = AllowList.parse("127.0.0.0/8")

# (URL, words the refusal must contain). Literal hosts only: no DNS involved.
DENIED_LITERALS = [
    ("http://127.0.0.1/", "127.0.0.1 is a loopback"),
    ("http://127.255.255.254/", "loopback"),
    # The forms the resolver accepts for 127.0.0.1: octal, a 32-bit integer, hex, short.
    ("http://0177.0.0.1/", "127.0.0.1 is a loopback"),
    ("http://2130706433/", "127.0.0.1 is a loopback"),
    ("http://0x7f.1/", "127.0.0.1 is a loopback"),
    ("http://0x7f000001/", "127.0.0.1 is a loopback"),
    ("http://127.1/", "127.0.0.1 is a loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://10.1.2.3/", "private"),
    ("http://012.1.2.3/", "10.1.2.3 is a private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://3232235777/", "192.168.1.1 is a private"),
    ("http://169.254.1.1/", "link-local"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://0xa9fea9fe/", "169.254.169.254 is a cloud metadata"),
    ("http://100.100.100.200/", "metadata"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.255/", "carrier-grade NAT"),
    ("http://192.0.0.8/", "IETF protocol"),
    ("http://192.0.2.1/", "documentation"),
    ("http://198.51.100.1/", "documentation"),
    ("http://203.0.113.1/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://198.19.255.255/", "benchmarking"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "broadcast"),
    ("https://127.0.0.1:8443/x?y=1", "loopback"),
    ("http://[::1]/", "::1 is a loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "::1 is a loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[100::1]/", "discard-only"),
    ("http://[4000::1]/", "not a global unicast"),
    # IPv4 inside IPv6: the packet ends up at the inner address.
    ("http://[::ffff:127.0.0.1]/", "carries 127.0.0.1, which is a loopback"),
    ("http://[::ffff:7f00:1]/", "carries 127.0.0.1, which is a loopback"),
    ("http://[::ffff:169.254.169.254]/", "carries 169.254.169.254, which is a cloud metadata"),
    ("http://[::ffff:0:10.0.0.1]/", "carries 10.0.0.1, which is a private"),
    ("http://[::127.0.0.1]/", "carries 127.0.0.1"),
    ("http://[::2]/", "carries 0.0.0.2, which is an unspecified"),
    ("http://[64:ff9b::10.0.0.1]/", "carries 10.0.0.1, which is a private"),
    ("http://[64:ff9b::a9fe:a9fe]/", "carries 169.254.169.254, which is a cloud metadata"),
    ("http://[64:ff9b:1::a00:1]/", "local-use NAT64"),
    ("http://[2002:7f00:1::]/", "carries 127.0.0.1, which is a loopback"),
    ("http://[2002:c0a8:101::1]/", "carries 192.168.1.1, which is a private"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "carries 127.0.0.1, which is a loopback"),
]

ALLOWED_LITERALS = [
    ("http://93.184.216.34/", "93.184.216.34"),
    ("https://1.1.1.1:8443/x", "1.1.1.1"),
    ("http://172.32.0.1/", "172.32.0.1"),  # just outside 172.16.0.0/12
    ("http://100.128.0.1/", "100.128.0.1"),  # just outside 100.64.0.0/10
    ("http://[2606:4700::1111]/", "2606:4700::1111"),
    ("http://[::ffff:8.8.8.8]/", "::ffff:808:808"),
    ("http://[64:ff9b::8.8.8.8]/", "64:ff9b::808:808"),
    ("http://[2002:808:808::1]/", "2002:808:808::1"),
]


@pytest.mark.parametrize("resolve", [True, False])
@pytest.mark.parametrize(("url", "reason"), DENIED_LITERALS)
def test_denied_literal_addresses(url: str, reason: str, resolve: bool) -> None:
    with pytest.raises(UrlRefused, match=reason):
        check_url(url, resolve=resolve)


@pytest.mark.parametrize(("url", "address"), ALLOWED_LITERALS)
def test_public_literal_addresses_pass_and_are_returned(url: str, address: str) -> None:
    assert check_url(url) == [ipaddress.ip_address(address)]
    assert check_url(url, resolve=False) == [ipaddress.ip_address(address)]


def test_refusal_is_invalid_input_naming_host_and_reason() -> None:
    with pytest.raises(UrlRefused) as caught:
        check_url("http://10.1.2.3:8080/a.png")
    error = caught.value
    assert isinstance(error, InvalidInput) and isinstance(error, ValueError)
    assert error.code is ErrorCode.INVALID_INPUT
    assert error.host == "10.1.2.3"
    assert str(error) == ("URL host '10.1.2.3' refused: address 10.1.2.3 is a private address; an operator can "
                          "allow it: VISIONQ_FETCH_ALLOW for image URLs, VISIONQ_WEBHOOK_ALLOW for webhooks (where "
                          "the URL is submitted and where it is used)")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher' is not allowed"),
        ("ftp://example.com/a.png", "^URL refused: scheme 'ftp' is not allowed"),  # the scheme, not the host
        ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
        ("example.com/a.png", "scheme '' is not allowed"),
        ("http://user@example.com/", "credentials"),
        ("http://user:secret@example.com/", "credentials"),
        ("http://@example.com/", "credentials"),
        # Browsers read the backslash as a path; we refuse the ambiguity outright.
        ("http://example.com\\@127.0.0.1/", "credentials"),
        ("http:///a.png", "has no host"),
        ("http://:80/", "has no host"),
        ("http://example.com:0/", "not in 1..65535"),
        ("http://example.com:65536/", "not in 1..65535"),
        ("http://example.com:http/", "not in 1..65535"),
        ("http://exa mple.com/", "whitespace or control"),
        ("http://example.com/a\r\nX-Injected: 1", "whitespace or control"),
        (" http://127.0.0.1/", "whitespace or control"),
        # urlsplit raises ValueError on these; found by schemathesis as a 500 from the gateway.
        ("http://[::1/cb", "not a valid URL"),
        ("http://\u00bf\u00d3t[\u0089\u00e9", "not a valid URL"),
    ],
)
def test_malformed_or_foreign_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused, match=reason):
        check_url(url, resolve=False)


def test_localhost_is_refused_by_what_it_resolves_to() -> None:
    for url in ("http://localhost/", "http://LOCALHOST:8080/path"):
        with pytest.raises(UrlRefused, match="loopback"):
            check_url(url)


def test_without_resolution_host_names_are_left_for_the_worker() -> None:
    assert check_url("https://images.example/a.png", resolve=False) == []
    assert check_url("https://localhost.example/a.png", resolve=False) == []


@pytest.mark.parametrize("resolve", [True, False])
@pytest.mark.parametrize(
    "url", ["http://localhost/", "http://LocalHost./x", "https://api.localhost/", "http://a.b.localhost.:8080/"]
)
def test_loopback_names_are_refused_without_asking_dns(url: str, resolve: bool, fake_dns) -> None:
    # RFC 6761: these names mean this machine whatever a resolver says.
    fake_dns(**{name: [["93.184.216.34"]] for name in ("api.localhost", "a.b.localhost")})
    with pytest.raises(UrlRefused, match="loopback by definition"):
        check_url(url, resolve=resolve)


@pytest.mark.parametrize("url", ["http://localhost:8000/cb", "http://localhost./cb", "https://hooks.localhost/cb"])
def test_webhooks_to_loopback_names_are_refused_at_submit(url: str) -> None:
    from tasks.limits import Limits
    from tasks.webhooks import validate_webhook

    with pytest.raises(UrlRefused, match="loopback by definition"):
        validate_webhook(url, None, Limits(), AllowList())
    assert validate_webhook(url, None, Limits(), AllowList.parse("localhost, hooks.localhost"))["url"] == url


def test_loopback_names_pass_when_allow_listed() -> None:
    assert check_url("http://localhost:9000/", AllowList.parse("localhost"), resolve=False) == []
    assert check_url("http://localhost:9000/", AllowList.parse("127.0.0.1"), resolve=False) == []
    with pytest.raises(UrlRefused, match="loopback by definition"):
        check_url("http://api.localhost/", AllowList.parse("localhost"), resolve=False)


# --- s3:// input locations (read against moto in tests/worker/test_inputs.py) ------


def test_bucket_allow_list_matches_buckets_and_whole_prefix_segments() -> None:
    allow = BucketAllowList.parse(" shared-inputs/public/ , s3://team-b ,, ").with_location("own", "svc")
    assert allow.allows("shared-inputs", "public/a.png")
    assert not allow.allows("shared-inputs", "public-not/a.png")
    assert not allow.allows("shared-inputs", "private/a.png")
    assert allow.allows("team-b", "any/key.png")
    assert allow.allows("own", "svc/inputs/a.png")
    assert not allow.allows("own", "svcx/a.png")
    assert not allow.allows("other-team", "hr/passport.png")
    assert not BucketAllowList().allows("own", "svc/a.png")


@pytest.mark.parametrize("text", ["Bad_Bucket", "b", "bucket/../x", "a" * 64])
def test_bucket_allow_list_refuses_malformed_entries(text: str) -> None:
    with pytest.raises(ValueError, match="input bucket entry"):
        BucketAllowList.parse(text)


# --- ports ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://93.184.216.34/", "https://93.184.216.34/", "http://93.184.216.34:443/",
                                 "https://[2606:2800:220:1::]:80/"])
def test_web_ports_pass(url: str) -> None:
    assert check_url(url, ports=WEB_PORTS)


@pytest.mark.parametrize("port", [22, 25, 6379, 8080, 1])
def test_other_ports_are_refused_before_connecting(port: int) -> None:
    with pytest.raises(UrlRefused, match=f"port {port} is not allowed"):
        check_url(f"http://93.184.216.34:{port}/", ports=WEB_PORTS)
    assert check_url(f"http://93.184.216.34:{port}/")  # webhooks: no port rule


def test_allow_listed_addresses_and_hosts_open_every_port(fake_dns) -> None:
    fake_dns(**{"images.internal": [["10.1.2.3"]], "mixed.internal": [["10.1.2.3", "93.184.216.34"]]})
    network = AllowList.parse("10.0.0.0/8")
    assert check_url("http://10.1.2.3:6379/", network, ports=WEB_PORTS)
    assert check_url("http://images.internal:8080/", network, ports=WEB_PORTS)
    assert check_url("http://images.internal:8080/", AllowList.parse("images.internal"), ports=WEB_PORTS)
    # One address outside the allowed network keeps the port rule for the name.
    with pytest.raises(UrlRefused, match="port 8080"):
        check_url("http://mixed.internal:8080/", network, ports=WEB_PORTS)


# --- resolved names, with a fake resolver -----------------------------------------


@dataclass
class FakeDns:
    """socket.getaddrinfo answering from a table (each name: one answer list per lookup,
    the last one repeated), falling back to the real resolver."""

    answers: dict[str, list[list[str]]]
    lookups: list[str] = field(default_factory=list)

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        if host not in self.answers:
            return REAL_GETADDRINFO(host, port, family, type, proto, flags)
        self.lookups.append(host)
        rounds = self.answers[host]
        addresses = rounds[min(len(self.lookups) - 1, len(rounds) - 1)]
        return [_addrinfo(address, port) for address in addresses]


REAL_GETADDRINFO = socket.getaddrinfo


def _addrinfo(address: str, port: int) -> tuple:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDns]:
    def install(**answers: list[list[str]]) -> FakeDns:
        dns = FakeDns({name.replace("_", "."): rounds for name, rounds in answers.items()})
        monkeypatch.setattr(socket, "getaddrinfo", dns.getaddrinfo)
        return dns

    return install


def test_public_name_resolving_to_private_address_is_refused(fake_dns) -> None:
    fake_dns(images_example=[["10.0.0.1"]])
    with pytest.raises(UrlRefused, match="'images.example' refused: address 10.0.0.1 is a private"):
        check_url("https://images.example/cat.png")


def test_every_resolved_address_is_checked(fake_dns) -> None:
    fake_dns(images_example=[["93.184.216.34", "2606:4700::1111", "169.254.169.254"]])
    with pytest.raises(UrlRefused, match="169.254.169.254 is a cloud metadata"):
        check_url("https://images.example/cat.png")


def test_resolved_mapped_ipv6_is_unwrapped(fake_dns) -> None:
    fake_dns(images_example=[["::ffff:10.0.0.1"]])
    with pytest.raises(UrlRefused, match="carries 10.0.0.1"):
        check_url("https://images.example/cat.png")


def test_public_name_returns_all_its_addresses(fake_dns) -> None:
    fake_dns(images_example=[["93.184.216.34", "2606:4700::1111", "93.184.216.34"]])
    assert check_url("https://images.example/cat.png") == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:4700::1111"),
    ]


def test_unresolvable_name_is_refused(fake_dns, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(UrlRefused, match="'nowhere.example' refused: the host name does not resolve"):
        check_url("http://nowhere.example/")


# --- allow-list ---------------------------------------------------------------------


def test_allow_list_parses_networks_addresses_and_names() -> None:
    allow = AllowList.parse(" 127.0.0.1/32, ::1, localhost, 10.0.0.0/8,, Images.Internal. ")
    assert allow.networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert allow.hosts == frozenset({"localhost", "images.internal"})
    assert AllowList.parse(None) == AllowList() == AllowList.parse("")


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "not a host", "http://x/", "a..b", "-x.example"])
def test_allow_list_rejects_bad_entries_by_name(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        AllowList.parse(f"127.0.0.1, {entry}")


def test_allowed_network_overrides_deny_rules_for_its_addresses_only() -> None:
    allow = AllowList.parse("127.0.0.1/32, 10.0.0.0/8, ::1")
    assert check_url("http://127.0.0.1:8080/", allow) == [ipaddress.ip_address("127.0.0.1")]
    assert check_url("http://[::1]/", allow) == [ipaddress.ip_address("::1")]
    assert check_url("http://10.9.8.7/", allow) == [ipaddress.ip_address("10.9.8.7")]
    # The inner IPv4 of a mapped address is what is reached, so its allowance counts.
    assert check_url("http://[::ffff:10.0.0.1]/", allow) == [ipaddress.ip_address("::ffff:10.0.0.1")]
    for url in ("http://127.0.0.2/", "http://169.254.169.254/", "http://192.168.0.1/", "http://[fe80::1]/"):
        with pytest.raises(UrlRefused):
            check_url(url, allow)


def test_allowed_host_name_overrides_deny_rules_for_that_host_only(fake_dns) -> None:
    fake_dns(images_internal=[["10.0.0.5"]], other_internal=[["10.0.0.5"]])
    allow = AllowList.parse("images.internal")
    assert check_url("http://images.internal/", allow) == [ipaddress.ip_address("10.0.0.5")]
    assert check_url("http://localhost/", AllowList.parse("localhost"))
    with pytest.raises(UrlRefused, match="'other.internal'"):
        check_url("http://other.internal/", allow)
    # The allowance covers the host, not the URL's other rules.
    with pytest.raises(UrlRefused, match="scheme"):
        check_url("ftp://images.internal/", allow)


# --- fetch against real loopback servers --------------------------------------------


@dataclass
class Server:
    port: int
    requests: list[tuple[str, dict[str, str]]]
    sni: list[str | None] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Canned answers by path; every request is recorded on the server."""

    protocol_version = "HTTP/1.1"
    server: _RecordingServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers)))
        route = "/" + self.path.split("?")[0].split("/")[1]
        if route == "/ok":
            self._send(200, b"\x89PNG fake image", "image/png")
        elif route == "/host":
            self._send(200, self.headers["Host"].encode(), "text/plain")
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/missing":
            self._send(404, b"no such image", "text/plain")
        elif route == "/sized":
            size = int(self.path.split("=")[1])
            self._send(200, b"x" * size, "application/octet-stream")
        elif route == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif route == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"z" * 10_000)
            self.close_connection = True
        elif route == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only a start")
            self.wfile.flush()
            self.server.release.wait(10)
        elif route == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
        elif route == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            for _ in range(200):  # each byte well within a read timeout, the whole far beyond
                self.wfile.write(b"d")
                self.wfile.flush()
                if self.server.release.wait(0.02):
                    return
        else:
            self._send(500, b"no such route in this test server", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep test output clean


class _RecordingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    redirect_to = ""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()

    def handle_error(self, request, client_address) -> None:
        pass  # the client hanging up on an oversized body is expected here


@pytest.fixture
def start_server() -> Iterator[Callable[..., tuple[Server, _RecordingServer]]]:
    servers: list[_RecordingServer] = []

    def start(tls: ssl.SSLContext | None = None) -> tuple[Server, _RecordingServer]:
        httpd = _RecordingServer()
        handle = Server(httpd.server_address[1], httpd.requests)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: handle.sni.append(name)
            httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(httpd)
        return handle, httpd

    yield start
    for httpd in servers:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(start_server) -> Server:
    return start_server()[0]


def test_fetch_returns_body_and_content_type(server: Server) -> None:
    body, content_type = fetch(server.url("/ok?size=small"), max_bytes=1000, allow=LOOPBACK)
    assert (body, content_type) == (b"\x89PNG fake image", "image/png")
    path, headers = server.requests[0]
    assert path == "/ok?size=small"
    assert headers["Host"] == f"127.0.0.1:{server.port}"


def test_fetch_refuses_loopback_without_allowance_and_never_connects(server: Server) -> None:
    with pytest.raises(UrlRefused, match="loopback"):
        fetch(server.url("/ok"), max_bytes=1000)
    assert server.requests == []


def test_fetch_connects_to_the_checked_address_and_sends_the_original_host(server: Server, fake_dns) -> None:
    # A rebinding resolver: the second answer would point elsewhere, but must never be asked.
    dns = fake_dns(images_test=[["127.0.0.1"], ["10.0.0.1"]])
    body, _ = fetch(server.url("/host", host="images.test"), max_bytes=1000, allow=LOOPBACK)
    assert body == f"images.test:{server.port}".encode()
    assert dns.lookups == ["images.test"]


def test_fetch_refuses_redirects_without_contacting_the_target(start_server) -> None:
    first, first_httpd = start_server()
    target, _ = start_server()
    first_httpd.redirect_to = target.url("/ok")
    with pytest.raises(UrlRefused, match="redirects are not followed \\(HTTP 302 to 'http://127.0.0.1:"):
        fetch(first.url("/redirect"), max_bytes=1000, allow=LOOPBACK)
    assert [path for path, _ in first.requests] == ["/redirect"]
    assert target.requests == []


def test_fetch_names_a_non_2xx_status(server: Server) -> None:
    with pytest.raises(InvalidInput, match="answered HTTP 404 Not Found") as caught:
        fetch(server.url("/missing"), max_bytes=1000, allow=LOOPBACK)
    assert not isinstance(caught.value, UrlRefused)


def test_fetch_accepts_a_body_of_exactly_max_bytes(server: Server) -> None:
    body, _ = fetch(server.url("/sized?n=1000"), max_bytes=1000, allow=LOOPBACK)
    assert body == b"x" * 1000


def test_fetch_refuses_a_declared_length_over_max_bytes(server: Server) -> None:
    with pytest.raises(InvalidInput, match="declares 1001 bytes, over the 1000-byte limit"):
        fetch(server.url("/sized?n=1001"), max_bytes=1000, allow=LOOPBACK)


@pytest.mark.parametrize("path", ["/chunked", "/until-close"])
def test_fetch_refuses_an_undeclared_body_over_max_bytes(server: Server, path: str) -> None:
    with pytest.raises(InvalidInput, match="is over the 5000-byte limit"):
        fetch(server.url(path), max_bytes=5000, allow=LOOPBACK)
    # The same bodies are fine under a large enough cap: the refusal was the cap's.
    body, _ = fetch(server.url(path), max_bytes=20_000, allow=LOOPBACK)
    assert len(body) == 10_000


def test_fetch_refuses_a_body_short_of_its_content_length(server: Server) -> None:
    with pytest.raises(InvalidInput, match="ended 90 bytes short of its Content-Length"):
        fetch(server.url("/short"), max_bytes=1000, allow=LOOPBACK)


def test_fetch_sends_non_ascii_paths_percent_encoded(server: Server) -> None:
    fetch(server.url("/ok/caf\u00e9 cr\u00e8me.png?q=\u00e9").replace(" ", "%20"), max_bytes=1000, allow=LOOPBACK)
    assert server.requests[0][0] == "/ok/caf%C3%A9%20cr%C3%A8me.png?q=%C3%A9"


def test_fetch_times_out_on_a_server_that_never_answers() -> None:
    with socket.socket() as listener:
        # Listening but never accepting: the kernel completes the handshake, nothing answers.
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(InvalidInput, match="did not finish within the 0.2 s limit"):
            fetch(f"http://127.0.0.1:{port}/", max_bytes=1000, timeout_s=0.2, allow=LOOPBACK)


def test_fetch_times_out_on_a_body_that_stalls(server: Server) -> None:
    with pytest.raises(InvalidInput, match="did not finish within the 0.2 s limit"):
        fetch(server.url("/stall"), max_bytes=1000, timeout_s=0.2, allow=LOOPBACK)


def test_fetch_times_out_on_a_body_that_drips(server: Server) -> None:
    with pytest.raises(InvalidInput, match="did not finish within the 0.3 s limit"):
        fetch(server.url("/drip"), max_bytes=1000, timeout_s=0.3, allow=LOOPBACK)


def test_fetch_reports_a_refused_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(InvalidInput, match=r"fetching 'http://127.0.0.1:\d+/' failed: no HTTP answer \(the connection was refused"):
        fetch(f"http://127.0.0.1:{port}/", max_bytes=1000, timeout_s=2, allow=LOOPBACK)


def test_fetch_tells_a_closed_port_from_a_non_http_service_by_nothing() -> None:
    """A port with something listening that is not HTTP fails with the closed port's words."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer() -> None:
        connection, _ = listener.accept()
        connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        connection.close()

    threading.Thread(target=answer, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    with pytest.raises(InvalidInput) as caught:
        fetch(url, max_bytes=1000, timeout_s=2, allow=LOOPBACK)
    listener.close()
    assert caught.value.message == f"fetching {url!r} failed: {NO_HTTP_ANSWER}"


def test_fetch_refuses_other_ports_unless_allow_listed() -> None:
    with pytest.raises(UrlRefused, match="port 6379 is not allowed"):
        fetch("http://93.184.216.34:6379/", max_bytes=1000, timeout_s=2)


# --- https: connect to the checked IP, verify the certificate against the host name ---


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for images.test, in PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, san: str | None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("visionq test CA", ca_key, "visionq test CA", ca_key, ca=True, san=None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate("images.test", server_key, "visionq test CA", ca_key, ca=False, san="images.test")
    paths = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def tls_server(tls_files, start_server, monkeypatch: pytest.MonkeyPatch, fake_dns) -> Server:
    ca, cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, _ = start_server(tls=context)
    # The client keeps its default verification, trusting only the test CA.
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda: real(cafile=str(ca)))
    fake_dns(images_test=[["127.0.0.1"]], other_test=[["127.0.0.1"]])
    return server


def test_https_verifies_the_certificate_for_the_host_name_not_the_ip(tls_server: Server) -> None:
    body, _ = fetch(tls_server.url("/host", host="images.test", scheme="https"), max_bytes=1000, allow=LOOPBACK)
    assert body == f"images.test:{tls_server.port}".encode()
    assert tls_server.sni == ["images.test"]


def test_https_refuses_a_certificate_for_another_name(tls_server: Server) -> None:
    with pytest.raises(InvalidInput, match=r"TLS with 'https://other.test:\d+/ok' failed: .*certificate verify failed"):
        fetch(tls_server.url("/ok", host="other.test", scheme="https"), max_bytes=1000, allow=LOOPBACK)
    assert tls_server.requests == []
