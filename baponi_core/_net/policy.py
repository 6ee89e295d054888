"""A sandbox profile's network policy: whether its sandboxes may reach the network at all
(``none``, the default), which hosts (``allowlist``), or any public host (``open``).

Rules are ``DOMAIN[:PORT]``: a host name, ``*.example.com`` for every name below
``example.com`` (not ``example.com`` itself), or an IP address (``[::1]:443`` for IPv6
with a port). Without a port a rule covers every port. A deny rule wins over every
allow rule. This module judges the name a client asked for; what the name resolves to
is judged when the connection is made (:mod:`baponi_core._net.egress`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from baponi_core._net.addresses import literal
from baponi_core._net.names import normal_name

MAX_RULES = 256  # per list: a profile is an operator's, but its JSON is still bounded


class Mode(StrEnum):
    NONE = "none"  # an empty network namespace: no proxy, nothing to reach
    ALLOWLIST = "allowlist"  # only the hosts of the allow rules (minus the deny rules)
    OPEN = "open"  # any public host (minus the deny rules)


@dataclass(frozen=True, order=True)
class Rule:
    """One ``DOMAIN[:PORT]``: ``host`` is a normalised name, ``*.`` + one, or an address."""

    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Raises ValueError naming what is wrong with ``text``."""
        host, port = _split_port(text.strip())
        wildcard = host.startswith("*.")
        name = host[2:] if wildcard else host
        address = None if wildcard else literal(name)
        if address is not None:
            return cls(str(address), port)
        normal = normal_name(name)
        if normal is None:
            raise ValueError(f"{text!r} is not DOMAIN[:PORT] (a host name, *.name or address)")
        return cls(f"*.{normal}" if wildcard else normal, port)

    def matches(self, host: str, port: int) -> bool:
        """``host`` is normalised (:func:`normal_host`)."""
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class NetworkPolicy:
    """Frozen and hashable: part of a sandbox's :class:`~baponi_core._sandbox.spec.Shape`."""

    mode: Mode = Mode.NONE
    allow: tuple[Rule, ...] = field(default=())
    deny: tuple[Rule, ...] = field(default=())

    @classmethod
    def of(cls, mode: str, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> NetworkPolicy:
        """Built from text (the CLI's, the store's); raises ValueError for a bad rule,
        an unknown mode, too many rules, or rules given with ``none``."""
        try:
            chosen = Mode(mode)
        except ValueError:
            raise ValueError(f"network mode {mode!r} is not one of none, allowlist, open") from None
        if chosen is Mode.NONE and (allow or deny):
            raise ValueError("network none takes no --allow or --deny rules")
        if len(allow) > MAX_RULES or len(deny) > MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} allow and {MAX_RULES} deny rules")
        return cls(
            chosen,
            tuple(sorted({Rule.parse(r) for r in allow})),
            tuple(sorted({Rule.parse(r) for r in deny})),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "mode": self.mode.value,
                "allow": [str(r) for r in self.allow],
                "deny": [str(r) for r in self.deny],
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> NetworkPolicy:
        if not text:
            return cls()
        data = json.loads(text)
        return cls.of(data["mode"], data.get("allow", []), data.get("deny", []))

    def refusal(self, host: str, port: int) -> str | None:
        """Why a connection to ``host``:``port`` is refused by the rules, or None. The
        address it resolves to is checked later, whatever this says."""
        if self.mode is Mode.NONE:
            return "networking is off"
        normal = normal_host(host)
        if normal is None:
            return "not a valid host"
        for rule in self.deny:
            if rule.matches(normal, port):
                return f"denied by rule {rule}"
        if self.mode is Mode.ALLOWLIST and not any(r.matches(normal, port) for r in self.allow):
            return "not in the allowlist"
        return None

    def __str__(self) -> str:
        parts = [self.mode.value]
        parts += [f"allow={r}" for r in self.allow] + [f"deny={r}" for r in self.deny]
        return " ".join(parts)


def normal_host(host: str) -> str | None:
    """The one form a host is compared in: an address as ``ipaddress`` writes it, a name
    lower-cased without its trailing dot; None when it is neither."""
    address = literal(host)
    return str(address) if address is not None else normal_name(host)


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [ADDRESS]:PORT")
        return host, _port(rest[1:], text) if rest else None
    if text.count(":") > 1:  # a bare IPv6 address, no port
        return text, None
    host, sep, port = text.partition(":")
    return host, _port(port, text) if sep else None


def _port(text: str, rule: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{rule!r}: the port must be a number from 1 to 65535")
    return int(text)
