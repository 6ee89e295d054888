"""The sandbox runtime: one fresh bubblewrap sandbox per execution."""

from baponi_core.sandbox.runner import SandboxRuntime
from baponi_core.sandbox.spec import Home, Limits, Outcome, SandboxSpec

__all__ = ["Home", "Limits", "Outcome", "SandboxRuntime", "SandboxSpec"]
