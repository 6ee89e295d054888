"""Host names of user-chosen URLs, in the one form they are judged in.

A name is judged as DNS would look it up: ``LocalHost.`` (the root's trailing dot, any
case) is ``localhost``, and an IDNA label must be in its canonical form, so that no
spelling of a refused name slips past a comparison with its plain one.
"""

from __future__ import annotations

import re

LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
MAX_NAME = 253
# A last label that is a number: an IPv4 address in a legacy form (``127.1``, ``0x7f.1``),
# which resolvers parse as one without a lookup, or no name at all (``1.2.3.4.5``).
NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")


def normal_name(host: str) -> str | None:
    """``host`` lower-cased, without its trailing dot, or None when it is no host name:
    an empty or over-long label, a character DNS names do not have, a numeric last label,
    an IDNA label (``xn--``) that is not the canonical encoding of a name."""
    name = host.lower()
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > MAX_NAME or not name.isascii():
        return None
    labels = name.split(".")
    if NUMERIC.fullmatch(labels[-1]):
        return None
    for label in labels:
        if not LABEL.fullmatch(label):
            return None
        if label.startswith("xn--"):
            try:  # the codec refuses bad Punycode and labels that do not round-trip
                label.encode().decode("idna")
            except UnicodeError:
                return None
    return name


def is_local(name: str) -> bool:
    """``localhost`` and the names below it, which never leave the machine (RFC 6761)."""
    return name == "localhost" or name.endswith(".localhost")
