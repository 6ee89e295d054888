"""The webhook address policy: no private IPv4 address gets through, however it is dressed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baponi_core.net.addresses import is_public, literal

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
