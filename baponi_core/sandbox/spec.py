"""Plain data passed into and out of the sandbox runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-execution resource limits. Memory includes /tmp and an ephemeral home (tmpfs)."""

    timeout_s: float = 60.0
    memory_bytes: int = 1024 * MiB
    cpus: float = 1.0
    pids: int = 256
    tmp_bytes: int = 256 * MiB
    home_bytes: int = 512 * MiB  # size of the ephemeral home when there is no thread
    file_size_bytes: int = 1024 * MiB
    output_bytes: int = 1 * MiB  # per stream
    open_files: int = 1024


@dataclass(frozen=True)
class Home:
    """The directory mounted at /home/baponi; ``None`` means a fresh, discarded tmpfs."""

    path: Path | None = None


@dataclass(frozen=True)
class SandboxSpec:
    language: str
    code: bytes
    env: dict[str, str] = field(default_factory=dict)
    home: Home = Home()
    limits: Limits = Limits()
    name: str = "run"  # unique among running sandboxes; names the cgroup


class Ending(Enum):
    """How a sandbox ended."""

    EXITED = "exited"
    OOM = "oom"
    TIMEOUT = "timeout"
    OUTPUT_LIMIT = "output_limit"
    SECCOMP = "seccomp"
    STOPPED = "stopped"  # killed on request: a cancel or a shutdown


@dataclass(frozen=True)
class Outcome:
    ending: Ending
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: int
