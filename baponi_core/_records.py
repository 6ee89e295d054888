"""The domain records: organisations, profiles, keys, volumes, executions, long-lived
sandboxes, and the enums
their states take, used as they are from the store to the wire models."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from baponi_core._net.policy import NetworkPolicy


class ExecutionStatus(StrEnum):
    QUEUED = "queued"  # a webhook execution not yet started
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    BLOCKED = "blocked"
    OOM = "oom"
    SECCOMP = "seccomp"
    CANCELLED = "cancelled"


class DeliveryMode(StrEnum):
    INLINE = "inline"  # the request waits for the result
    STREAMING = "streaming"  # the request follows the events
    WEBHOOK = "webhook"  # answered at once; the result is POSTed when it is there


class WebhookStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


DEFAULT_RETENTION_DAYS = 30


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    max_concurrency: int
    created_at: float
    # Days an execution (record, output, stored events) is kept after its end; None: forever.
    retention_days: int | None = DEFAULT_RETENTION_DAYS


@dataclass(frozen=True)
class Profile:
    """A sandbox profile: the resources every execution with a bound key gets."""

    id: str
    org_id: str
    name: str
    cpus: float = 1.0
    memory_mb: int = 1024
    pids: int = 256
    max_timeout: int = 3600
    tmp_mb: int = 256
    output_kb: int = 1024
    runtime: str = "default"  # the runtime its sandboxes run on (baponi runtimes list)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)  # none: no network at all


@dataclass(frozen=True)
class ApiKey:
    id: str
    org_id: str
    profile_id: str
    name: str
    prefix: str  # the first characters, to recognise a key in listings
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Volume:
    """Storage mounted at ``/data/<slug>/`` in the sandboxes of the keys bound to it.

    ``url`` ``None`` is a managed volume on the server's own storage; a URL
    (``s3://bucket/prefix``, ``gs://...``, ``az://...``) is a storage connection to the
    user's own bucket, ``options`` its fsspec storage options, credentials included: kept
    out of ``repr`` so that they never reach a log, and never shown by listings.
    """

    id: str
    org_id: str
    slug: str
    read_only: bool
    created_at: float
    url: str | None = None
    options: dict[str, Any] = field(default_factory=dict, repr=False, hash=False)
    quota_bytes: int | None = None  # a managed volume's size, kept by the kernel; None: none

    @property
    def is_connection(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class Connector:
    """Credentials injected into the executions of the keys bound to it: environment
    variables, and files at ``/run/secrets/<name>/<path>``. Only the names of its variables
    and the paths of its files are in clear; the values are ``sealed`` (AES-GCM, the
    connector's and organisation's ids as associated data), kept out of ``repr``."""

    id: str
    org_id: str
    name: str
    env_names: tuple[str, ...]
    file_paths: tuple[str, ...]
    created_at: float
    rotated_at: float | None = None
    sealed: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and what it is bound to."""

    key: ApiKey
    org: Org
    profile: Profile
    volumes: tuple[Volume, ...] = ()  # bound volumes and connections, sorted by slug


@dataclass
class Execution:
    trace_id: str
    org_id: str
    key_id: str | None
    language: str
    delivery_mode: DeliveryMode
    created_at: float
    timeout: int = 60
    status: ExecutionStatus = ExecutionStatus.RUNNING
    thread_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None
    duration_ms: int | None = None
    completed_at: float | None = None
    webhook_url: str | None = None
    webhook_delivery_status: WebhookStatus | None = None
    webhook_attempts: int = 0
    webhook_next_at: float | None = None
    connectors: list[str] = field(default_factory=list)  # names of those injected


class SandboxState(StrEnum):
    """A long-lived sandbox's life, in OpenSandbox's words (``status.state``)."""

    PENDING = "Pending"
    RUNNING = "Running"
    PAUSING = "Pausing"
    PAUSED = "Paused"
    STOPPING = "Stopping"
    TERMINATED = "Terminated"
    FAILED = "Failed"

    @property
    def live(self) -> bool:
        """Whether the sandbox still holds (or is about to hold) processes on this server."""
        return self not in (SandboxState.TERMINATED, SandboxState.FAILED)


@dataclass
class Sandbox:
    """A sandbox kept open between requests until it is deleted, expires, or the server
    stops. ``cpus``, ``memory_mb`` and ``pids`` are its own limits, within its key's
    profile; ``env`` is given to every process it runs."""

    id: str
    org_id: str
    key_id: str | None
    runtime: str
    created_at: float
    expires_at: float
    cpus: float
    memory_mb: int
    pids: int
    state: SandboxState = SandboxState.PENDING
    reason: str | None = None  # why it is in its state (OpenSandbox's ``status.reason``)
    message: str | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)
    metadata: dict[str, str] = field(default_factory=dict)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    ended_at: float | None = None
    entrypoint: list[str] = field(default_factory=list)  # started at create, kept running
