"""The sandbox runtime: bubblewrap sandboxes prepared ahead, each running processes
through its own init until it is closed (:mod:`handle` has the contract), and the
one-shot execution built on them (:mod:`oneshot`)."""

from baponi_core._sandbox.handle import MountError, Process, Sandbox, SandboxError, SecretsError
from baponi_core._sandbox.oneshot import CodeRun, Ending, Outcome, run_code, run_to_end
from baponi_core._sandbox.runtime import SandboxRuntime
from baponi_core._sandbox.spec import Command, Limits, Mount, Shape, volume_mounts

__all__ = [
    "CodeRun",
    "Command",
    "Ending",
    "Limits",
    "Mount",
    "MountError",
    "Outcome",
    "Process",
    "Sandbox",
    "SandboxError",
    "SandboxRuntime",
    "SecretsError",
    "Shape",
    "run_code",
    "run_to_end",
    "volume_mounts",
]
