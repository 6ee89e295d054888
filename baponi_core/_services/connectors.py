"""Connectors: credentials an operator stores once, injected at run time into the
executions of the keys bound to them, and nowhere else.

A connector holds environment variables and files. Their names and paths are kept in
clear (listings show them); their values are sealed together (:mod:`baponi_core._sealing`)
with the connector's and organisation's ids as associated data, and opened only when an
execution of a bound key starts: never returned by an API, printed, logged or recorded.
A rotation replaces all of a connector's values; the next execution gets the new ones.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import anyio

from baponi_core._errors import Conflict, CredentialError, NotFound, ValidationError
from baponi_core._ids import new_id
from baponi_core._models import check_env_var
from baponi_core._records import Connector, Org
from baponi_core._sealing import Keyring
from baponi_core._store import Store

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # the directory /run/secrets/<name>
PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_ENV = 50
MAX_FILES = 32
MAX_DEPTH = 4
MAX_PATH = 255
MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 4 << 20
# Connectors one key may be bound to: what one sandbox's slot may have to hold stays
# bounded (the slots' tmpfs is the server's memory).
MAX_PER_KEY = 16


@dataclass(frozen=True)
class Values:
    """What a connector injects: variables, and files by path below its directory."""

    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Injection:
    """What one execution receives: the names of the connectors (for its record), their
    variables, and their files by path below /run/secrets (``<connector>/<path>``)."""

    names: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)


def check_values(values: Values) -> None:
    """Refuse variables a request could not set either, and paths that are not plain
    relative paths; bound what one connector may hold."""
    if not values.env and not values.files:
        raise ValidationError("a connector needs at least one --env or --file")
    if len(values.env) > MAX_ENV or len(values.files) > MAX_FILES:
        raise ValidationError(
            f"a connector holds at most {MAX_ENV} variables and {MAX_FILES} files"
        )
    for key, value in values.env.items():
        try:
            check_env_var(key, value)
        except ValueError as exc:
            raise ValidationError(f"{key}: {exc}") from None
    for path, data in values.files.items():
        _check_path(path)
        if len(data) > MAX_FILE_BYTES:
            raise ValidationError(f"file {path} is larger than {MAX_FILE_BYTES >> 20} MiB")
        if any(other.startswith(f"{path}/") for other in values.files):
            raise ValidationError(f"file {path} is also a directory of another file")
    if sum(map(len, values.files.values())) > MAX_TOTAL_BYTES:
        raise ValidationError(f"a connector's files hold at most {MAX_TOTAL_BYTES >> 20} MiB")


def _check_path(path: str) -> None:
    parts = PurePosixPath(path).parts
    if (
        not parts
        or len(path) > MAX_PATH
        or len(parts) > MAX_DEPTH
        or "/".join(parts) != path
        or not all(PATH_PART.fullmatch(part) for part in parts)
    ):
        raise ValidationError(
            f"file path {path!r} must be a relative path of 1-{MAX_DEPTH} names of letters, "
            "digits, '_', '.' and '-' (not starting with '.' or '-')"
        )


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValidationError(
            f"connector name {name!r} is invalid: 1-63 lower-case letters, digits, '_' or "
            "'-', starting with a letter or digit (its files are at /run/secrets/<name>/)"
        )
    return name


def check_bound(count: int) -> None:
    if count > MAX_PER_KEY:
        raise ValidationError(f"a key may be bound to at most {MAX_PER_KEY} connectors")


async def named(store: Store, org: Org, names: Iterable[str]) -> list[Connector]:
    """The connectors of ``org`` by name, each once; NotFound names the first missing."""
    found = []
    for name in dict.fromkeys(names):
        connector = await store.get_connector(org.id, name)
        if connector is None:
            raise NotFound(f"connector {name} not found in organisation {org.name}")
        found.append(connector)
    return found


def _associated(org_id: str, connector_id: str) -> bytes:
    return f"baponi connector\0{org_id}\0{connector_id}".encode()


def _plain(values: Values) -> bytes:
    """A JSON header (the variables, and each file's path and size), its length first,
    then the files' bytes as they are: no encoding to undo for megabytes of files."""
    sizes = [[path, len(data)] for path, data in values.files.items()]
    header = json.dumps({"env": dict(values.env), "files": sizes}).encode()
    return b"".join((len(header).to_bytes(4, "big"), header, *values.files.values()))


def _values(plain: bytes) -> Values:
    try:
        end = 4 + int.from_bytes(plain[:4], "big")
        header: Any = json.loads(plain[4:end])
        env = {str(k): str(v) for k, v in header["env"].items()}
        files = {}
        for path, size in header["files"]:
            files[str(path)], end = plain[end : end + int(size)], end + int(size)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialError("the opened value is not a connector's") from None
    if end != len(plain):
        raise CredentialError("the opened value is not a connector's")
    return Values(env, files)


class Connectors:
    """The operator's actions on connectors, and what an execution of a key receives."""

    def __init__(self, store: Store, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring

    async def _org(self, name: str) -> Org:
        org = await self.store.get_org(name)
        if org is None:
            raise NotFound(f"organisation {name} not found")
        return org

    def _sealed(self, connector: Connector, values: Values) -> Connector:
        return dataclasses.replace(
            connector,
            env_names=tuple(sorted(values.env)),
            file_paths=tuple(sorted(values.files)),
            sealed=self.keyring.seal(_plain(values), _associated(connector.org_id, connector.id)),
        )

    def _open(self, connector: Connector) -> Values:
        try:
            plain = self.keyring.open(connector.sealed, _associated(connector.org_id, connector.id))
        except CredentialError as exc:
            raise CredentialError(f"connector {connector.name}: {exc.message}") from None
        return _values(plain)

    async def create(self, org_name: str, name: str, values: Values) -> Connector:
        check_name(name)
        check_values(values)
        org = await self._org(org_name)
        if await self.store.get_connector(org.id, name) is not None:
            raise Conflict(f"connector {name} already exists in organisation {org_name}")
        blank = Connector(new_id("con"), org.id, name, (), (), created_at=time.time())
        connector = self._sealed(blank, values)
        await self.store.create_connector(connector)
        return connector

    async def list(self, org_name: str) -> list[Connector]:
        return await self.store.list_connectors((await self._org(org_name)).id)

    async def rotate(self, org_name: str, name: str, values: Values) -> Connector:
        """Replace all of the connector's values; executions started from now get them."""
        check_values(values)
        org = await self._org(org_name)
        (current,) = await named(self.store, org, [name])
        connector = self._sealed(dataclasses.replace(current, rotated_at=time.time()), values)
        await self.store.replace_connectors([connector])
        return connector

    async def delete(self, org_name: str, name: str) -> None:
        """Forget the connector and unbind it from every key."""
        org = await self._org(org_name)
        if not await self.store.delete_connector(org.id, name):
            raise NotFound(f"connector {name} not found in organisation {org_name}")

    async def bind(self, org_name: str, key_id: str, names: Sequence[str], bound: bool) -> None:
        """Bind the named connectors to the key (``bound`` False: unbind them)."""
        org = await self._org(org_name)
        if key_id not in {k.id for k in await self.store.list_keys(org.id)}:
            raise NotFound(f"key {key_id} not found in organisation {org_name}")
        ids = [c.id for c in await named(self.store, org, names)]
        if bound:
            current = (await self.store.key_connectors(org.id)).get(key_id, [])
            check_bound(len(set(current) | set(names)))
            await self.store.bind_connectors(key_id, ids)
        else:
            await self.store.unbind_connectors(key_id, ids)

    async def reseal(self) -> int:
        """Seal every connector of every organisation with a new key, then drop the old
        keys; how many were resealed. Nothing is dropped unless all of them were."""
        connectors = await self.store.list_connectors()
        opened = [(c, self._open(c)) for c in connectors]  # fails before any change
        self.keyring.add_key()
        await self.store.replace_connectors([self._sealed(c, v) for c, v in opened])
        self.keyring.keep_newest()
        return len(opened)

    async def for_key(self, key_id: str) -> Injection:
        """What an execution of the key receives; CredentialError (naming the connector,
        never a value) when a connector cannot be opened or two set one variable."""
        env: dict[str, str] = {}
        files: dict[str, bytes] = {}
        connectors = await self.store.bound_connectors(key_id)
        for connector in connectors:
            # Off the event loop: the key file is read, and up to 4 MiB decrypted.
            values = await anyio.to_thread.run_sync(self._open, connector)
            clash = sorted(env.keys() & values.env.keys())
            if clash:
                raise CredentialError(f"connector {connector.name}: {clash[0]} is set twice")
            env.update(values.env)
            files.update({f"{connector.name}/{p}": d for p, d in values.files.items()})
        return Injection(tuple(c.name for c in connectors), env, files)
