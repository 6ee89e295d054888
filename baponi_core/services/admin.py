"""Operator actions: organisations, sandbox profiles and API keys."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from baponi_core.errors import Conflict, NotFound, ValidationError
from baponi_core.ids import hash_key, new_api_key, new_id
from baponi_core.services.webhooks import secret_for
from baponi_core.store import ApiKey, Org, Profile, Store

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
DEFAULT_ORG = "default"
DEFAULT_PROFILE = "default"
DEFAULT_MAX_CONCURRENCY = 8

# Bounds an operator may set on a profile (lower, upper).
PROFILE_BOUNDS: dict[str, tuple[float, float]] = {
    "cpus": (0.05, 64),
    "memory_mb": (32, 1 << 20),
    "pids": (8, 1 << 16),
    "max_timeout": (1, 3600),
    "tmp_mb": (1, 1 << 20),
    "output_kb": (1, 1 << 20),
}


def _check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValidationError(
            f"{kind} name must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class Admin:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def org(self, name: str) -> Org:
        org = await self.store.get_org(name)
        if org is None:
            raise NotFound(f"organisation {name} not found")
        return org

    async def create_org(self, name: str, max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> Org:
        _check_name("organisation", name)
        if max_concurrency < 1:
            raise ValidationError("max concurrency must be at least 1")
        if await self.store.get_org(name) is not None:
            raise Conflict(f"organisation {name} already exists")
        org = await self.store.create_org(name, max_concurrency)
        await self.store.save_profile(
            Profile(id=new_id("prf"), org_id=org.id, name=DEFAULT_PROFILE)
        )
        await secret_for(self.store, org.id)
        return org

    async def set_max_concurrency(self, org_name: str, max_concurrency: int) -> Org:
        if max_concurrency < 1:
            raise ValidationError("max concurrency must be at least 1")
        org = dataclasses.replace(await self.org(org_name), max_concurrency=max_concurrency)
        await self.store.update_org(org)
        return org

    async def save_profile(self, org_name: str, name: str, **limits: Any) -> Profile:
        """Create the profile, or change the given limits of an existing one."""
        _check_name("profile", name)
        for field, value in limits.items():
            low, high = PROFILE_BOUNDS[field]
            if not low <= value <= high:
                raise ValidationError(f"{field} must be between {low:g} and {high:g}")
        org = await self.org(org_name)
        current = await self.store.get_profile(org.id, name) or Profile(
            id=new_id("prf"), org_id=org.id, name=name
        )
        profile = dataclasses.replace(current, **limits)
        await self.store.save_profile(profile)
        return profile

    async def create_key(
        self, org_name: str = DEFAULT_ORG, name: str = "default", profile: str = DEFAULT_PROFILE
    ) -> tuple[ApiKey, str]:
        """A new key; its secret is returned once and only its hash is kept."""
        org = await self.org(org_name)
        bound = await self.store.get_profile(org.id, profile)
        if bound is None:
            raise NotFound(f"profile {profile} not found in organisation {org_name}")
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
        return key, secret

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
