"""What ``baponi keys|orgs|profiles|volumes|connections`` do, for a program: thin over the
core's ``Admin`` service, with its checks and messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict, Unpack

from baponi_core._app import Core
from baponi_core._records import DEFAULT_RETENTION_DAYS, ApiKey, Org, Profile, Volume
from baponi_core._services.admin import DEFAULT_MAX_CONCURRENCY, DEFAULT_PROFILE


class ProfileLimits(TypedDict, total=False):
    """A profile's limits; each within the bounds ``baponi profiles set`` states."""

    cpus: float
    memory_mb: int
    pids: int
    max_timeout: int  # seconds
    tmp_mb: int
    output_kb: int


class Management:
    """Organisations, profiles, API keys, volumes and storage connections."""

    def __init__(self, core: Callable[[], Core]) -> None:
        self._core = core  # the open core, or RuntimeError

    # organisations

    async def create_org(
        self,
        name: str,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retention_days: int | None = DEFAULT_RETENTION_DAYS,
    ) -> Org:
        """A new organisation, with its ``default`` profile."""
        return await self._core().admin.create_org(name, max_concurrency, retention_days)

    async def get_org(self, name: str) -> Org:
        return await self._core().admin.org(name)

    async def list_orgs(self) -> list[Org]:
        return await self._core().store.list_orgs()

    async def set_max_concurrency(self, org: str, max_concurrency: int) -> Org:
        return await self._core().admin.set_max_concurrency(org, max_concurrency)

    async def set_retention(self, org: str, retention_days: int | None) -> Org:
        """Days executions are kept after their end (None: forever)."""
        return await self._core().admin.set_retention(org, retention_days)

    async def webhook_secret(self, org: str, rotate: bool = False) -> str:
        """The secret the organisation's webhooks are signed with; ``rotate``: a new one."""
        return await self._core().admin.webhook_secret(org, rotate)

    # profiles

    async def save_profile(self, org: str, name: str, **limits: Unpack[ProfileLimits]) -> Profile:
        """Create the profile, or change the given limits of an existing one."""
        return await self._core().admin.save_profile(org, name, **limits)

    async def list_profiles(self, org: str) -> list[Profile]:
        core = self._core()
        return await core.store.list_profiles((await core.admin.org(org)).id)

    # API keys

    async def create_key(
        self,
        org: str,
        name: str = "default",
        profile: str = DEFAULT_PROFILE,
        volumes: Sequence[str] = (),
        connections: Sequence[str] = (),
    ) -> tuple[ApiKey, str]:
        """A new key and its secret, which is shown here only (only its hash is kept)."""
        return await self._core().admin.create_key(org, name, profile, volumes, connections)

    async def list_keys(self, org: str) -> list[ApiKey]:
        core = self._core()
        return await core.store.list_keys((await core.admin.org(org)).id)

    async def revoke_key(self, org: str, key_id: str) -> None:
        await self._core().admin.revoke_key(org, key_id)

    # volumes and storage connections

    async def create_volume(
        self, org: str, slug: str, read_only: bool = False, quota_bytes: int | None = None
    ) -> Volume:
        """A managed volume on the core's storage, mounted at ``/data/<slug>``."""
        return await self._core().admin.create_volume(org, slug, read_only, quota_bytes=quota_bytes)

    async def create_connection(
        self,
        org: str,
        slug: str,
        url: str,
        options: Mapping[str, str] | None = None,
        read_only: bool = False,
    ) -> Volume:
        """A storage connection to a bucket of the user's (``s3://``, ``gs://``, ``az://``),
        ``options`` its credentials."""
        return await self._core().admin.create_volume(
            org, slug, read_only, url=url, options=dict(options or {})
        )

    async def list_volumes(self, org: str) -> list[Volume]:
        """Volumes and storage connections, by slug."""
        return await self._core().admin.list_volumes(org)

    async def delete_volume(self, org: str, slug: str) -> None:
        """Forget a volume or connection and unbind it from every key; a managed volume's
        files go at the core's next sweep."""
        await self._core().admin.delete_volume(org, slug)
