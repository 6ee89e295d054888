"""The sandbox runtime: one fresh bubblewrap sandbox per execution."""

from baponi_core.sandbox.runner import MountError, SandboxError, SandboxRuntime
from baponi_core.sandbox.spec import Home, Limits, Mount, Outcome, SandboxSpec, volume_mounts

__all__ = [
    "Home",
    "Limits",
    "Mount",
    "MountError",
    "Outcome",
    "SandboxError",
    "SandboxRuntime",
    "SandboxSpec",
    "volume_mounts",
]
