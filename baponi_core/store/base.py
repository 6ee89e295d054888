"""What the services need from a database. A PostgreSQL store implements the same Protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    max_concurrency: int
    created_at: float


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

    @property
    def is_connection(self) -> bool:
        return self.url is not None


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
    delivery_mode: str
    created_at: float
    timeout: int = 60
    status: str = "running"
    thread_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None
    duration_ms: int | None = None
    completed_at: float | None = None
    webhook_url: str | None = None
    webhook_delivery_status: str | None = None
    webhook_attempts: int = 0
    webhook_next_at: float | None = None


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create_org(self, name: str, max_concurrency: int) -> Org: ...
    async def get_org(self, name: str) -> Org | None: ...
    async def list_orgs(self) -> list[Org]: ...
    async def update_org(self, org: Org) -> None: ...

    async def save_profile(self, profile: Profile) -> None: ...
    async def get_profile(self, org_id: str, name: str) -> Profile | None: ...
    async def list_profiles(self, org_id: str) -> list[Profile]: ...

    async def create_key(self, key: ApiKey, secret_hash: str) -> None: ...
    async def find_key(self, secret_hash: str) -> Principal | None: ...
    async def list_keys(self, org_id: str) -> list[ApiKey]: ...
    async def revoke_key(self, org_id: str, key_id: str, when: float) -> bool: ...

    async def create_volume(self, volume: Volume) -> None: ...
    async def get_volume(self, org_id: str, slug: str) -> Volume | None: ...
    async def list_volumes(self, org_id: str) -> list[Volume]: ...
    async def volume_ids(self) -> dict[str, set[str]]:
        """The ids of the volumes and storage connections of every organisation, by org id
        (organisations without any included)."""
        ...

    async def delete_volume(self, org_id: str, slug: str) -> bool:
        """Delete the volume and its bindings to keys; ``False`` when there was none."""
        ...

    async def bind_volumes(self, key_id: str, volume_ids: list[str]) -> None: ...
    async def key_volumes(self, org_id: str) -> dict[str, list[str]]:
        """The slugs bound to each key of the organisation (keys without any left out)."""
        ...

    async def insert_execution(self, execution: Execution) -> None: ...
    async def update_execution(self, execution: Execution) -> None: ...
    async def get_execution(self, org_id: str, trace_id: str) -> Execution | None: ...
    async def fail_unfinished(self, error: str, when: float) -> list[tuple[str, str]]:
        """Mark every execution without an end as failed (pending webhooks become due);
        return their (org id, trace id)."""
        ...

    async def due_webhooks(self, now: float, limit: int) -> list[Execution]: ...
    async def next_webhook_at(self) -> float | None: ...
    async def webhook_secret(self, org_id: str) -> str | None: ...
    async def set_webhook_secret(self, org_id: str, secret: str, replace: bool) -> None:
        """Set the secret; unless ``replace``, only where there is none yet."""
        ...

    async def add_events(
        self, trace_id: str, events: list[tuple[int, str]], expires_at: float
    ) -> None: ...
    async def get_events(self, trace_id: str, after_seq: int, now: float) -> list[str]: ...
    async def purge_events(self, now: float) -> int: ...
