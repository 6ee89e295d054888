"""Which addresses a user-chosen URL may reach. Checked on the resolved address, at connect
time, so a name that resolves differently later (DNS rebinding) is caught too."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

import anyio
import httpcore2

from baponi_core._net.names import is_local, normal_name

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedTarget(httpcore2.ConnectError):
    """The target resolves only to addresses the policy forbids; retrying will not help."""


# IPv6 prefixes whose last 32 bits are an IPv4 address a gateway may forward to.
NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# What inet_aton may take for an address: one to four dot-separated decimal, octal or hex parts.
LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}")


def is_public(address: Address) -> bool:
    """Globally routable unicast, and so is any IPv4 address carried inside an IPv6 one
    (mapped, compatible, 6to4, Teredo, NAT64): not private, loopback, link-local, shared..."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client: the server part is public by construction
    if address in IPV4_COMPATIBLE or any(address in net for net in NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def literal(host: str) -> Address | None:
    """The address ``host`` writes, in any form a resolver reads as one without a lookup:
    standard, bracketed IPv6, or legacy IPv4 (``127.1``, ``0x7f.0.0.1``, ``2130706433``)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if not LEGACY_IPV4.fullmatch(host.lower()):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def reachable(host: str) -> bool:
    """Whether the host of a URL may be reached, judged on its text alone, before any
    lookup: an address must be public; a name must be a valid one and not local."""
    address = literal(host)
    if address is not None:
        return is_public(address)
    name = normal_name(host)
    return name is not None and not is_local(name)


class GuardedBackend(httpcore2.AnyIOBackend):
    """httpcore's anyio backend, connecting only to addresses the policy allows. TLS still
    verifies the URL's host name: httpcore passes it as the server name, not our address."""

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        allowed = await allowed_addresses(host, port, self.allow_private, timeout)
        error: Exception | None = None
        for address in allowed:
            try:
                return await super().connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error


async def allowed_addresses(
    host: str, port: int, allow_private: bool, within_s: float | None
) -> list[str]:
    """The addresses ``host`` resolves to that may be reached (all of them with
    ``allow_private``), in the resolver's order. Raises RefusedTarget when there are none,
    ConnectError when the name does not resolve. A host refused on its text alone is never
    looked up."""
    if not allow_private and not reachable(host):
        raise RefusedTarget(f"{host} is a private, local or invalid host")
    try:
        with anyio.fail_after(within_s):
            found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    allowed = [a for a in addresses if allow_private or _public(a)]
    if not allowed:
        raise RefusedTarget(f"{host} resolves only to private or reserved addresses")
    return allowed


def _public(text: str) -> bool:
    address = literal(text)
    return address is not None and is_public(address)
