"""The admin service's rules for volumes and storage connections, in-process on a real
store (each implementation's): slugs, connection URLs and options, which keys may bind
which volumes."""

from __future__ import annotations

from typing import Any

import pytest

from baponi_core._errors import Conflict, NotFound, ValidationError
from baponi_core._services.admin import Admin
from baponi_core._store import Store

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("slug", ["Reports", "-x", "a_b", "a.b", "x" * 64, "", "a/b"])
async def test_bad_slugs_are_refused(store: Store, slug: str) -> None:
    admin = Admin(store)
    await admin.ensure_default_org()
    with pytest.raises(ValidationError, match="lower-case letters"):
        await admin.create_volume("default", slug)
    assert await admin.list_volumes("default") == []


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("http://bucket/x", {}, "scheme one of"),
        ("s3:/bucket", {}, "scheme one of"),
        ("s3://", {}, "scheme one of"),
        ("s3://AKIA:secret@bucket/x", {}, "no credentials"),
        ("gs://bucket/x?token=1", {}, "no credentials"),
        ("az://bucket/../other", {}, "'..'"),
        ("s3://bucket", {"key": 1}, "must be a string"),
        ("s3://bucket", {"bad name": "x"}, "option name"),
    ],
)
async def test_bad_connections_are_refused(
    store: Store, url: str, options: dict[str, Any], message: str
) -> None:
    admin = Admin(store)
    await admin.ensure_default_org()
    with pytest.raises(ValidationError, match=message):
        await admin.create_volume("default", "lake", url=url, options=options)


async def test_keys_bind_only_known_volumes_of_their_org(store: Store) -> None:
    admin = Admin(store)
    await admin.ensure_default_org()
    await admin.create_org("other")
    await admin.create_volume("other", "theirs")
    await admin.create_volume("default", "lake", url="gs://b", options={"token": "anon"})
    with pytest.raises(NotFound, match="volume theirs not found in organisation default"):
        await admin.create_key(volumes=["theirs"])
    with pytest.raises(ValidationError, match="lake is a storage connection, not a volume"):
        await admin.create_key(volumes=["lake"])
    with pytest.raises(NotFound, match="storage connection nope not found"):
        await admin.create_key(connections=["nope"])
    assert await store.list_keys((await admin.org("default")).id) == []  # none made
    with pytest.raises(Conflict, match="already exists"):
        await admin.create_volume("default", "lake")
    with pytest.raises(ValidationError, match="only for storage connections"):
        await admin.create_volume("default", "plain", options={"key": "x"})
    with pytest.raises(NotFound, match="volume gone not found"):
        await admin.delete_volume("default", "gone")
