"""The webhook address policy: no private IPv4 address gets through, however it is dressed."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import anyio
import httpcore2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from baponi_core._net.addresses import GuardedBackend, RefusedTarget, is_public, literal, reachable
from baponi_core._net.names import normal_name

PRIVATE_V4 = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
]


@pytest.mark.parametrize(
    "text",
    [*PRIVATE_V4, "::1", "::", "fe80::1", "fc00::1", "ff02::1", "[::1]", "::ffff:10.0.0.1"],
)
def test_private_and_special_addresses_are_refused(text: str) -> None:
    address = literal(text)
    assert address is not None and not is_public(address)


@pytest.mark.parametrize("text", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(text: str) -> None:
    address = literal(text)
    assert address is not None and is_public(address)


def test_names_are_not_literals() -> None:
    assert literal("example.com") is None and literal("vm") is None


def dressed(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """``v4`` inside IPv6: mapped, compatible, 6to4 and the two NAT64 prefixes."""
    n = int(v4)
    return [
        ipaddress.IPv6Address((0xFFFF << 32) | n),
        ipaddress.IPv6Address(n),
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80)),
        ipaddress.IPv6Address((0x0064FF9B << 96) | n),
        ipaddress.IPv6Address((0x0064FF9B0001 << 80) | n),
    ]


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_inside_ipv6_is_judged_like_itself(v4: ipaddress.IPv4Address) -> None:
    if not is_public(v4):
        assert not any(is_public(v6) for v6 in dressed(v4))


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("LOCALHOST.", "localhost"),
        ("api.localhost.", "api.localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("a_b.example", "a_b.example"),
        ("vm", "vm"),
    ],
)
def test_names_are_judged_as_dns_looks_them_up(host: str, name: str) -> None:
    assert normal_name(host) == name


@pytest.mark.parametrize(
    "host",
    [
        "",
        ".",
        "localhost..",
        "a..b",
        "-a.example",
        "a-.example",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4),  # 255 characters
        "b\u00fccher.example",  # Unicode: a URL carries the IDNA form
        "xn--zz.example",  # no Punycode
        "xn--localhost-",  # Punycode of "localhost", which has no IDNA form
        "1.2.3.4.5",
        "example.123",
        "a b",
    ],
)
def test_what_is_no_host_name(host: str) -> None:
    assert normal_name(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LocalHost.",
        "api.localhost.",
        "127.1",
        "0x7f.1",
        "2130706433",
        "0177.0.0.1",
        "::1",
        "[::ffff:127.0.0.1]",
        "a..b",
        "xn--localhost-",
    ],
)
def test_local_private_and_invalid_hosts_are_not_reachable(host: str) -> None:
    assert not reachable(host)


@pytest.mark.parametrize(
    "host", ["example.com", "example.com.", "8.8.8.8", "0x08.8.8.8", "2606:4700:4700::1111"]
)
def test_public_hosts_are_reachable(host: str) -> None:
    assert reachable(host)


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["localhost.", "api.localhost.", "a..b", "127.1", "10.0.0.1"])
async def test_no_lookup_is_made_for_a_refused_host(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused on its text before the resolver is asked: nothing about the name leaves the
    machine. The resolver is watched, not replaced."""
    looked_up: list[str] = []
    resolve = anyio.getaddrinfo

    async def watched(name: str, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(name)
        return await resolve(name, *args, **kwargs)

    monkeypatch.setattr(anyio, "getaddrinfo", watched)
    with pytest.raises(RefusedTarget):
        await GuardedBackend().connect_tcp(host, 443, timeout=5)
    assert looked_up == []
    # Allowed, a loopback literal is handed to the resolver (which parses it, no DNS): the
    # watch does watch.
    if host == "127.1":
        with contextlib.suppress(httpcore2.ConnectError):
            await GuardedBackend(allow_private=True).connect_tcp(host, 9, timeout=5)
        assert looked_up == [host]
