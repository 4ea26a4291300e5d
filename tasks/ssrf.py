"""The guard in front of every URL we fetch or call (image URLs, webhooks).

This module decides; worker/outbound.py connects (to the checked addresses only).

A URL is judged by the addresses its host resolves to, never by its text:
``0177.0.0.1``, ``2130706433`` and ``0x7f.1`` are all 127.0.0.1 to the resolver.
Every A/AAAA answer must pass, IPv4 carried inside IPv6 is unwrapped and judged
too, and the connection goes to an address that was checked, so a second DNS
answer (rebinding) is never consulted. Redirects are refused rather than
followed, since the target of a redirect was never checked.

The deny tables are written out here: ``ipaddress.is_private`` was wrong before
Python 3.11.10 (CVE-2024-4032), and this project runs on 3.11.7.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import SplitResult, quote, urlsplit

from tasks.errors import InvalidInput

__all__ = ["AllowList", "BucketAllowList", "CheckedUrl", "UnresolvedHost", "UrlRefused", "WEB_PORTS", "check_url",
           "checked_url"]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}
# The ports image URLs may name unless the allow-list admits the host: anything else
# is a probe of some other service (ssh, smtp, Redis) through our workers.
WEB_PORTS = frozenset(_DEFAULT_PORTS.values())
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(cidr), why) for cidr, why in rows)


# First match wins, so the narrow entries (metadata) come before the ranges holding them.
_IPV4_DENIED = _table(
    ("169.254.169.254/32", "a cloud metadata address"),
    ("100.100.100.200/32", "a cloud metadata address (Alibaba)"),
    # Public address space, but only reachable from inside Azure VMs (WireServer).
    ("168.63.129.16/32", "a cloud metadata address (Azure)"),
    ("0.0.0.0/8", "an unspecified address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_IPV6_DENIED = _table(
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("fc00::/7", "a private (unique local) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
    ("100::/64", "a discard-only address"),
    # Local-use NAT64 (RFC 8215) only exists inside one network, like a private range;
    # its IPv4 may sit at several offsets, so the prefix is refused as a whole.
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("2001:2::/48", "a benchmarking address"),
    ("2001:10::/28", "an ORCHID address"),
    ("2001:20::/28", "an ORCHID address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
)
# Every routable IPv6 unicast address is in 2000::/3; the translation prefixes below
# sit outside it and are judged by the IPv4 address they carry.
_IPV6_GLOBAL_UNICAST = ip_network("2000::/3")
_LOOPBACK = IPv4Address("127.0.0.1")
_LOW32_PREFIXES = tuple(
    ip_network(prefix)
    for prefix in (
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b::/96",  # NAT64 well-known prefix
        "::/96",  # IPv4-compatible
    )
)


# Said with an address refused: whoever meant an internal host learns how an operator allows it.
ALLOW_HINT = ("; an operator can allow it: VISIONQ_FETCH_ALLOW for image URLs, VISIONQ_WEBHOOK_ALLOW for webhooks "
              "(where the URL is submitted and where it is used)")


class UrlRefused(InvalidInput):
    """A URL the guard will not fetch or call; a webhook is not retried (`retryable`)."""

    retryable = False

    def __init__(self, reason: str, host: str | None = None) -> None:
        message = f"URL host {host!r} refused: {reason}" if host else f"URL refused: {reason}"
        super().__init__(message)
        self.host = host
        self.reason = reason


class UnresolvedHost(UrlRefused):
    """The host name does not resolve now: a webhook is retried on its schedule, as for a receiver
    that does not answer (a DNS blip, a record not yet published), and dead-lettered after."""

    retryable = True


@dataclass(frozen=True)
class AllowList:
    """Explicit exceptions to the deny rules: networks, single addresses, host names.

    A host name entry allows that host whatever it resolves to; a network entry
    allows the addresses in it, for any host.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, text: str | None) -> AllowList:
        """``"127.0.0.1/32, ::1, localhost, 10.0.0.0/8"``; None or "" is the empty list."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in (text or "").split(","):
            entry = entry.strip().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ip_network(entry))
                continue
            except ValueError:
                pass
            host = _normalize_host(entry)
            if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
                raise ValueError(f"allow-list entry {entry!r} is neither an IP network nor a host name")
            hosts.add(host)
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return _normalize_host(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


@dataclass(frozen=True)
class BucketAllowList:
    """The s3:// locations a worker reads inputs from: its own storage, plus
    ``VISIONQ_INPUT_BUCKETS`` ("bucket" or "bucket/prefix", comma-separated).

    A worker's credentials usually reach more than the deployment's bucket; without
    this list a producer could have any object they reach read and echoed back.
    """

    entries: tuple[tuple[str, str], ...] = ()  # (bucket, key prefix ending in "/" or "")

    @classmethod
    def parse(cls, text: str | None) -> BucketAllowList:
        entries = []
        for entry in (text or "").split(","):
            entry = entry.strip().removeprefix("s3://").strip("/")
            if not entry:
                continue
            bucket, _, prefix = entry.partition("/")
            if not _BUCKET_NAME.fullmatch(bucket) or ".." in prefix.split("/"):
                raise ValueError(f"input bucket entry {entry!r} is not bucket or bucket/prefix")
            entries.append((bucket, f"{prefix}/" if prefix else ""))
        return cls(tuple(entries))

    def with_location(self, bucket: str, prefix: str) -> BucketAllowList:
        """This list plus one more location (the deployment's own storage)."""
        return BucketAllowList(self.entries + ((bucket, f"{prefix.strip('/')}/" if prefix.strip("/") else ""),))

    def allows(self, bucket: str, key: str) -> bool:
        # Keys are compared as given: S3 does not resolve ".." in keys, so
        # "prefix/../other" is just another key under "prefix/".
        return any(bucket == allowed and key.startswith(prefix) for allowed, prefix in self.entries)


@dataclass(frozen=True)
class CheckedUrl:
    """A checked URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: list[IPAddress]


def check_url(
    url: str, allow: AllowList = AllowList(), *, resolve: bool = True, ports: frozenset[int] | None = None
) -> list[IPAddress]:
    """Refuse `url` (UrlRefused) unless every address its host resolves to may be contacted.

    With ``resolve=False`` no DNS query is made: only a host that is an IP literal,
    in any form the resolver accepts, or a name that is loopback by definition
    (``localhost``, ``*.localhost``: RFC 6761) is checked (submit time fails fast on
    those; the worker checks again with DNS). With `ports`, a port outside it is
    refused unless the allow-list admits the host (by name, or every address of it).
    Returns the addresses checked.
    """
    return checked_url(url, allow, resolve=resolve, ports=ports).addresses


def checked_url(
    url: str, allow: AllowList, *, resolve: bool = True, ports: frozenset[int] | None = None
) -> CheckedUrl:
    """The URL split into what a connection needs, every address checked (see check_url)."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise UrlRefused(f"{url[:80]!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" (IPv6 literal), or a host NFKC makes unsafe
        raise UrlRefused(f"{url[:80]!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UrlRefused(f"scheme {parts.scheme!r} is not allowed (http or https only)")  # whatever the host
    if "@" in parts.netloc:
        raise UrlRefused("credentials in URLs are not allowed", parts.hostname)
    host = parts.hostname
    if not host:
        raise UrlRefused(f"{url[:80]!r} has no host")
    port = _port(parts, host)
    if _is_loopback_name(host) and not allow.allows_host(host) and not allow.allows_address(_LOOPBACK):
        # RFC 6761: resolvers may answer these from anywhere, but they mean this machine.
        raise UrlRefused(f"the name is loopback by definition (RFC 6761){ALLOW_HINT}", host)
    addresses = _resolve(host, port, resolve=resolve)
    if not allow.allows_host(host):
        for address in addresses:
            reason = _refusal(address, allow)
            if reason:
                raise UrlRefused(reason + ALLOW_HINT, host)
    if ports is not None and port not in ports and not _opens_every_port(host, addresses, allow):
        allowed = " and ".join(str(p) for p in sorted(ports))
        raise UrlRefused(f"port {port} is not allowed (only {allowed}, unless the allow-list names the host)", host)
    return CheckedUrl(scheme, host, port, _request_target(parts), addresses)


def _is_loopback_name(host: str) -> bool:
    name = _normalize_host(host)
    return name == "localhost" or name.endswith(".localhost")


def _opens_every_port(host: str, addresses: list[IPAddress], allow: AllowList) -> bool:
    """An allow-listed host name, or addresses all inside allow-listed networks."""
    return allow.allows_host(host) or bool(addresses) and all(allow.allows_address(a) for a in addresses)


def _request_target(parts: SplitResult) -> str:
    """Path and query as sent; http.client takes ASCII only, so other characters are
    percent-encoded (as browsers do)."""
    target = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
    return _NON_ASCII.sub(lambda match: quote(match.group()), target)


def _port(parts: SplitResult, host: str) -> int:
    try:
        port = parts.port
    except ValueError:  # not a decimal number, or over 65535
        port = -1
    if port is None:
        return _DEFAULT_PORTS[parts.scheme.lower()]
    if not 1 <= port <= 65535:
        raise UrlRefused(f"the port in {parts.netloc!r} is not in 1..65535", host)
    return port


def _resolve(host: str, port: int, *, resolve: bool) -> list[IPAddress]:
    """All A/AAAA answers for `host`, in the resolver's order, without duplicates."""
    # AI_NUMERICHOST parses the literal forms exactly as a lookup would, with no DNS.
    flags = 0 if resolve else socket.AI_NUMERICHOST
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    except socket.gaierror as exc:
        if not resolve:
            return []  # a host name: the worker resolves and checks it
        raise UnresolvedHost(f"the host name does not resolve ({exc.strerror})", host) from exc
    except UnicodeError as exc:
        raise UrlRefused("the host name is not valid", host) from exc
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if resolve and not addresses:
        raise UrlRefused("the host name has no IPv4 or IPv6 address", host)
    return addresses


def _refusal(address: IPAddress, allow: AllowList) -> str | None:
    """Why `address` may not be contacted, or None when it may."""
    if allow.allows_address(address):
        return None
    if isinstance(address, IPv4Address):
        why = _denied(address, _IPV4_DENIED)
        return f"address {address} is {why}" if why else None
    why = _denied(address, _IPV6_DENIED)
    if why:
        return f"address {address} is {why}"
    embedded = _embedded_ipv4(address)
    for inner in embedded:
        why = None if allow.allows_address(inner) else _denied(inner, _IPV4_DENIED)
        if why:
            return f"address {address} carries {inner}, which is {why}"
    if embedded:
        return None
    if address not in _IPV6_GLOBAL_UNICAST:
        return f"address {address} is not a global unicast address"
    return None


def _denied(address: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    for network, why in table:
        if address in network:
            return why
    return None


def _embedded_ipv4(address: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses a packet to `address` may end up at (mapped, NAT64, 6to4, Teredo)."""
    # IPv4-compatible (::/96) is deprecated, but some stacks still route it as IPv4.
    if any(address in prefix for prefix in _LOW32_PREFIXES):
        return [IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        server, client = address.teredo
        return [server, client]
    return []


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")
