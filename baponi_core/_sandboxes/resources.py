"""A long-lived sandbox's own limits, from OpenSandbox's ``resourceLimits`` (Kubernetes
quantities: ``cpu: "500m"``, ``memory: "512Mi"``), clamped to the key's profile.

Clamped, never refused (docs/opensandbox.md): the SDK's defaults exceed small profiles,
and a default ``Sandbox.create()`` must work. A quantity that is not one is a 400. Names
other than ``cpu`` and ``memory`` (``gpu``, ...) have nothing to bound here and are
ignored; the effective limits are what a read of the sandbox shows."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from baponi_core._errors import ValidationError
from baponi_core._records import Profile

# A plain decimal and a suffix; no exponents, signs or spaces (the value is from a request).
QUANTITY = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)([A-Za-z]{0,2})")
BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
MIB = 1 << 20
MIN_CPUS = 0.01  # a quota below 1 ms per 100 ms period does not run anything
MIN_MEMORY_MB = 16  # below this an interpreter does not start


@dataclass(frozen=True)
class Resources:
    cpus: float
    memory_mb: int
    pids: int


def resources_for(profile: Profile, asked: Mapping[str, str] | None) -> Resources:
    """The limits a sandbox gets: what was asked, within ``profile`` (all of it when
    nothing was asked)."""
    asked = asked or {}
    cpus = profile.cpus
    if "cpu" in asked:
        cpus = min(cpus, max(MIN_CPUS, float(_cpus(asked["cpu"]))))
    memory_mb = profile.memory_mb
    if "memory" in asked:
        memory_mb = min(memory_mb, max(MIN_MEMORY_MB, _bytes(asked["memory"]) // MIB))
    return Resources(cpus=cpus, memory_mb=memory_mb, pids=profile.pids)


def _cpus(text: str) -> Decimal:
    number, suffix = _split("cpu", text)
    if suffix == "m":
        return number / 1000
    if suffix:
        raise ValidationError(f"resourceLimits.cpu: unknown unit {suffix!r} (cores, or 500m)")
    return number


def _bytes(text: str) -> int:
    number, suffix = _split("memory", text)
    scale = BINARY.get(suffix) or DECIMAL.get(suffix)
    if scale is None:
        raise ValidationError(f"resourceLimits.memory: unknown unit {suffix!r} (512Mi, 1Gi)")
    return int(number * scale)


def _split(name: str, text: object) -> tuple[Decimal, str]:
    match = QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValidationError(f"resourceLimits.{name} is not a quantity (such as 500m or 512Mi)")
    return Decimal(match[1]), match[2]
