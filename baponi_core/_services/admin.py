"""Operator actions: organisations, sandbox profiles, API keys, volumes and storage
connections."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from baponi_core._errors import Conflict, NotFound, ValidationError
from baponi_core._ids import hash_key, new_api_key, new_id
from baponi_core._net.policy import NetworkPolicy
from baponi_core._records import DEFAULT_RETENTION_DAYS, ApiKey, Org, Principal, Profile, Volume
from baponi_core._runtimes import Runtimes
from baponi_core._services.connectors import check_bound, named
from baponi_core._services.webhooks import secret_for
from baponi_core._storage.urls import CLOUD_SCHEMES
from baponi_core._store import Store

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
# A volume's slug is the directory it is mounted at, /data/<slug>: lower case, no dots.
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
OPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DEFAULT_ORG = "default"
DEFAULT_PROFILE = "default"
DEFAULT_RUNTIME = Profile(id="", org_id="", name="").runtime  # "default"
DEFAULT_MAX_CONCURRENCY = 8
MIN_RETENTION_DAYS, MAX_RETENTION_DAYS = 1, 36500
# The key id the local user (stdio MCP) and in-process callers act under: no secret, never
# stored, so it can never be presented over HTTP; stable, so its executions stay
# recognisable across runs.
LOCAL_KEY_ID = "key_local"

# Bounds an operator may set on a profile (lower, upper).
PROFILE_BOUNDS: dict[str, tuple[float, float]] = {
    "cpus": (0.05, 64),
    "memory_mb": (32, 1 << 20),
    "pids": (8, 1 << 16),
    "max_timeout": (1, 3600),
    "tmp_mb": (1, 1 << 20),
    "output_kb": (1, 1 << 20),
}

MIN_VOLUME_QUOTA = 1 << 20  # a filesystem smaller than this holds next to nothing


def check_retention(days: int | None) -> None:
    """Refuse a retention outside what may be set (None, forever, always may)."""
    if days is not None and not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
        raise ValidationError(
            f"retention must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS} days, "
            "or unlimited"
        )


def check_limits(limits: Mapping[str, float], max_concurrency: int | None = None) -> None:
    """Refuse profile limits (by field) and a concurrency outside what may be set."""
    for field, value in limits.items():
        low, high = PROFILE_BOUNDS[field]
        if not low <= value <= high:
            raise ValidationError(f"{field} must be between {low:g} and {high:g}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValidationError("max concurrency must be at least 1")


def network_policy(mode: str, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> NetworkPolicy:
    """A profile's network policy from its text; ValidationError names a bad part."""
    try:
        return NetworkPolicy.of(mode, tuple(allow), tuple(deny))
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValidationError(
            f"{kind} name must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_slug(slug: str) -> str:
    if not SLUG.fullmatch(slug):
        raise ValidationError(
            f"volume slug {slug!r} is invalid: it must be 1-63 lower-case letters, digits "
            "or '-', starting with a letter or digit (it is mounted at /data/<slug>)"
        )
    return slug


def _check_connection(url: str, options: dict[str, str]) -> None:
    """A bucket URL without credentials in it (they go in ``options``), and str options."""
    scheme, sep, rest = url.partition("://")
    bucket = rest.split("/", 1)[0]
    if not sep or scheme not in CLOUD_SCHEMES or not bucket:
        raise ValidationError(
            f"storage connection URL must be <scheme>://<bucket>[/prefix] with scheme one of "
            f"{', '.join(CLOUD_SCHEMES)}"
        )
    if "@" in bucket or any(c in rest for c in "?#\\\0") or ".." in rest.split("/"):
        raise ValidationError(
            "storage connection URL must hold no credentials, query, '..' or backslash: "
            "pass credentials as options"
        )
    for name, value in options.items():
        if not isinstance(name, str) or not OPTION_NAME.fullmatch(name):
            raise ValidationError(f"storage option name {name!r} is invalid")
        if not isinstance(value, str):
            raise ValidationError(f"storage option {name} must be a string")


class Admin:
    def __init__(self, store: Store, runtimes: Runtimes | None = None) -> None:
        self.store = store
        self.runtimes = runtimes  # where a profile's runtime is looked for; None: not checked

    async def org(self, name: str) -> Org:
        org = await self.store.get_org(name)
        if org is None:
            raise NotFound(f"organisation {name} not found")
        return org

    async def create_org(
        self,
        name: str,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retention_days: int | None = DEFAULT_RETENTION_DAYS,
    ) -> Org:
        check_name("organisation", name)
        check_limits({}, max_concurrency)
        check_retention(retention_days)
        if await self.store.get_org(name) is not None:
            raise Conflict(f"organisation {name} already exists")
        org = await self.store.create_org(name, max_concurrency, retention_days)
        await self.store.save_profile(
            Profile(id=new_id("prf"), org_id=org.id, name=DEFAULT_PROFILE)
        )
        await secret_for(self.store, org.id)
        return org

    async def set_max_concurrency(self, org_name: str, max_concurrency: int) -> Org:
        check_limits({}, max_concurrency)
        org = dataclasses.replace(await self.org(org_name), max_concurrency=max_concurrency)
        await self.store.update_org(org)
        return org

    async def set_retention(self, org_name: str, retention_days: int | None) -> Org:
        """Keep the organisation's executions ``retention_days`` after their end (None:
        forever); older ones go at the server's next retention sweep."""
        check_retention(retention_days)
        org = dataclasses.replace(await self.org(org_name), retention_days=retention_days)
        await self.store.update_org(org)
        return org

    async def save_profile(
        self,
        org_name: str,
        name: str,
        runtime: str | None = None,
        network: NetworkPolicy | None = None,
        **limits: Any,
    ) -> Profile:
        """Create the profile, or change the given limits (and runtime, and with
        ``network`` its network policy) of an existing one. The runtime must be installed."""
        check_name("profile", name)
        check_limits(limits)
        if runtime is not None:
            check_name("runtime", runtime)
            if self.runtimes is not None and self.runtimes.find(runtime) is None:
                raise NotFound(
                    f"runtime {runtime} is not installed: baponi runtimes import {runtime} SOURCE"
                )
            limits["runtime"] = runtime
        org = await self.org(org_name)
        current = await self.store.get_profile(org.id, name) or Profile(
            id=new_id("prf"), org_id=org.id, name=name
        )
        if network is not None:
            limits["network"] = network
        profile = dataclasses.replace(current, **limits)
        await self.store.save_profile(profile)
        return profile

    async def create_key(
        self,
        org_name: str = DEFAULT_ORG,
        name: str = "default",
        profile: str = DEFAULT_PROFILE,
        volumes: Sequence[str] = (),
        connections: Sequence[str] = (),
        connectors: Sequence[str] = (),
    ) -> tuple[ApiKey, str]:
        """A new key, bound to the given volumes and storage connections (slugs in its
        organisation) and connectors (names); its secret is returned once and only its
        hash is kept."""
        org = await self.org(org_name)
        bound = await self.store.get_profile(org.id, profile)
        if bound is None:
            raise NotFound(f"profile {profile} not found in organisation {org_name}")
        mounted = [await self._volume(org, slug, connection=False) for slug in volumes]
        mounted += [await self._volume(org, slug, connection=True) for slug in connections]
        injected = await named(self.store, org, connectors)
        check_bound(len(injected))
        secret = new_api_key()
        key = ApiKey(
            id=new_id("key"),
            org_id=org.id,
            profile_id=bound.id,
            name=name[:64],
            prefix=secret[:14],
            created_at=time.time(),
        )
        await self.store.create_key(key, hash_key(secret))
        try:
            await self.store.bind_volumes(key.id, list(dict.fromkeys(v.id for v in mounted)))
            await self.store.bind_connectors(key.id, [c.id for c in injected])
        except Exception:
            await self.store.revoke_key(org.id, key.id, time.time())  # never half-bound
            raise
        return key, secret

    async def create_volume(
        self,
        org_name: str,
        slug: str,
        read_only: bool = False,
        url: str | None = None,
        options: dict[str, str] | None = None,
        quota_bytes: int | None = None,
    ) -> Volume:
        """A managed volume (no ``url``) or a storage connection to the user's bucket; a
        managed volume may have a quota."""
        _check_slug(slug)
        if url is None and options:
            raise ValidationError("storage options are only for storage connections (a URL)")
        if quota_bytes is not None and (url is not None or quota_bytes < MIN_VOLUME_QUOTA):
            raise ValidationError(
                "a quota is for managed volumes, of at least 1M"
                if url is None
                else "a storage connection's size is its bucket's business: no quota"
            )
        if url is not None:
            _check_connection(url, options or {})
        org = await self.org(org_name)
        if await self.store.get_volume(org.id, slug) is not None:
            raise Conflict(f"volume {slug} already exists in organisation {org_name}")
        volume = Volume(
            id=new_id("vol"),
            org_id=org.id,
            slug=slug,
            read_only=read_only,
            created_at=time.time(),
            url=url,
            options=dict(options or {}),
            quota_bytes=quota_bytes,
        )
        await self.store.create_volume(volume)
        return volume

    async def list_volumes(self, org_name: str) -> list[Volume]:
        """Volumes and storage connections of the organisation, by slug."""
        return await self.store.list_volumes((await self.org(org_name)).id)

    async def delete_volume(self, org_name: str, slug: str, connection: bool | None = None) -> None:
        """Forget the volume and unbind it from every key (its stored files are not touched).
        ``connection`` True or False insists on a storage connection or a managed volume."""
        org = await self.org(org_name)
        if connection is not None:
            await self._volume(org, slug, connection)
        if not await self.store.delete_volume(org.id, slug):
            raise NotFound(f"volume {slug} not found in organisation {org_name}")

    async def _volume(self, org: Org, slug: str, connection: bool) -> Volume:
        """A volume (or, with ``connection``, a storage connection) of ``org`` by slug."""
        kind = "storage connection" if connection else "volume"
        volume = await self.store.get_volume(org.id, slug)
        if volume is None:
            raise NotFound(f"{kind} {slug} not found in organisation {org.name}")
        if volume.is_connection != connection:
            actual = "storage connection" if volume.is_connection else "managed volume"
            raise ValidationError(f"{slug} is a {actual}, not a {kind}")
        return volume

    async def revoke_key(self, org_name: str, key_id: str) -> None:
        org = await self.org(org_name)
        if not await self.store.revoke_key(org.id, key_id, time.time()):
            raise NotFound(f"key {key_id} not found or already revoked")

    async def webhook_secret(self, org_name: str, rotate: bool = False) -> str:
        """The secret webhooks of the organisation are signed with; ``rotate`` makes a new one
        (deliveries from then on use it)."""
        return await secret_for(self.store, (await self.org(org_name)).id, rotate)

    async def ensure_default_org(self) -> Org:
        """The default organisation, made on first use of an empty database."""
        return await self.store.get_org(DEFAULT_ORG) or await self.create_org(DEFAULT_ORG)

    async def first_start(self) -> str | None:
        """While the default organisation has no key yet, make one and return its secret."""
        org = await self.ensure_default_org()
        if await self.store.list_keys(org.id):
            return None
        _, secret = await self.create_key(name="first key")
        return secret

    async def local_principal(
        self, limits: Mapping[str, Any] | None = None, max_concurrency: int | None = None
    ) -> Principal:
        """The user on this machine (``baponi-mcp`` over stdio), trusted without an API key:
        the default organisation, its default profile and all its volumes. ``limits`` (by
        profile field) and ``max_concurrency`` override the stored ones for this process;
        nothing is stored."""
        check_limits(limits or {}, max_concurrency)
        org = await self.ensure_default_org()
        if max_concurrency is not None:
            org = dataclasses.replace(org, max_concurrency=max_concurrency)
        profile = await self.store.get_profile(org.id, DEFAULT_PROFILE)
        if profile is None:  # deleted by hand: the defaults, as create_org makes them
            profile = Profile(id=new_id("prf"), org_id=org.id, name=DEFAULT_PROFILE)
            await self.store.save_profile(profile)
        profile = dataclasses.replace(profile, **(limits or {}))
        return _local(org, profile, tuple(await self.store.list_volumes(org.id)))

    async def principal(
        self, org_name: str, profile_name: str, volumes: Sequence[str] | None = None
    ) -> Principal:
        """An in-process caller, trusted without an API key, bound as a key would be: the
        organisation, its profile ``profile_name`` and the volumes and connections named
        by slug (None: all of the organisation's). Read from the store at each call, so
        that changed limits apply at once, as they do to a key."""
        org = await self.org(org_name)
        profile = await self.store.get_profile(org.id, profile_name)
        if profile is None:
            raise NotFound(f"profile {profile_name} not found in organisation {org_name}")
        every = await self.store.list_volumes(org.id)
        if volumes is None:
            return _local(org, profile, tuple(every))
        by_slug = {volume.slug: volume for volume in every}
        missing = [slug for slug in volumes if slug not in by_slug]
        if missing:
            raise NotFound(f"volume {missing[0]} not found in organisation {org_name}")
        chosen = sorted({by_slug[slug] for slug in volumes}, key=lambda v: v.slug)
        return _local(org, profile, tuple(chosen))


def _local(org: Org, profile: Profile, volumes: tuple[Volume, ...]) -> Principal:
    """A principal under the local key id: no secret, so nothing over HTTP can be it."""
    key = ApiKey(
        id=LOCAL_KEY_ID,
        org_id=org.id,
        profile_id=profile.id,
        name="local user",
        prefix="local",
        created_at=org.created_at,
    )
    return Principal(key=key, org=org, profile=profile, volumes=volumes)
