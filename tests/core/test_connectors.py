"""Connectors in-process on a real store (each implementation's) and a real key file: the
keyring's sealing, the service's rules, what an execution of a key receives."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from baponi_core._errors import Conflict, CredentialError, NotFound, ValidationError
from baponi_core._sealing import Keyring
from baponi_core._services.admin import Admin
from baponi_core._services.connectors import Connectors, Injection, Values
from baponi_core._store import Store

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"


@pytest.fixture()
async def connectors(store: Store, tmp_path: Path) -> Connectors:
    await Admin(store).ensure_default_org()
    return Connectors(store, Keyring(tmp_path / "home" / "connectors.keys"))


# -- the keyring ----------------------------------------------------------------------------


def test_the_key_file_is_made_on_first_use_private(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "connectors.keys")
    assert not keyring.path.exists()
    sealed = keyring.seal(b"value", b"owner")
    assert stat.S_IMODE(keyring.path.stat().st_mode) == 0o600
    assert b"value" not in sealed
    assert keyring.open(sealed, b"owner") == b"value"
    assert keyring.seal(b"value", b"owner") != sealed  # a nonce of its own each time


def test_a_value_opens_only_for_its_owner(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "connectors.keys")
    sealed = keyring.seal(b"value", b"org-1/con-1")
    with pytest.raises(CredentialError, match="damaged"):
        keyring.open(sealed, b"org-2/con-1")  # copied onto another row


@pytest.mark.parametrize("where", [0, 5, 25, -1])
def test_a_damaged_value_does_not_open(tmp_path: Path, where: int) -> None:
    keyring = Keyring(tmp_path / "connectors.keys")
    sealed = bytearray(keyring.seal(b"value", b"owner"))
    sealed[where] ^= 0x40
    with pytest.raises(CredentialError):
        keyring.open(bytes(sealed), b"owner")
    with pytest.raises(CredentialError, match="damaged"):
        keyring.open(bytes(sealed[:20]), b"owner")


def test_another_key_file_is_told_apart(tmp_path: Path) -> None:
    sealed = Keyring(tmp_path / "a.keys").seal(b"value", b"owner")
    other = Keyring(tmp_path / "b.keys")
    other.add_key()
    with pytest.raises(CredentialError, match="does not hold"):
        other.open(sealed, b"owner")
    with pytest.raises(CredentialError, match="cannot be read"):
        Keyring(tmp_path / "missing.keys").open(sealed, b"owner")
    (tmp_path / "bad.keys").write_text("not base64 at all!\n")
    (tmp_path / "bad.keys").chmod(0o600)
    with pytest.raises(CredentialError, match=r"cannot be read|no valid key"):
        Keyring(tmp_path / "bad.keys").open(sealed, b"owner")


def test_a_symlinked_key_file_is_not_followed(tmp_path: Path) -> None:
    real = Keyring(tmp_path / "real.keys")
    sealed = real.seal(b"value", b"owner")
    (tmp_path / "link.keys").symlink_to(real.path)
    with pytest.raises(CredentialError, match="cannot be read"):
        Keyring(tmp_path / "link.keys").open(sealed, b"owner")


def test_a_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "connectors.keys")
    sealed = keyring.seal(b"value", b"owner")
    keyring.path.chmod(0o640)
    with pytest.raises(CredentialError, match="open to others: chmod 600"):
        keyring.open(sealed, b"owner")
    keyring.path.chmod(0o600)
    assert keyring.open(sealed, b"owner") == b"value"


def test_older_keys_open_until_dropped(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "connectors.keys")
    old = keyring.seal(b"old", b"owner")
    keyring.add_key()
    new = keyring.seal(b"new", b"owner")
    assert keyring.open(old, b"owner") == b"old"
    keyring.keep_newest()
    assert keyring.open(new, b"owner") == b"new"
    with pytest.raises(CredentialError, match="does not hold"):
        keyring.open(old, b"owner")
    assert stat.S_IMODE(keyring.path.stat().st_mode) == 0o600


# -- the service ----------------------------------------------------------------------------


async def test_values_are_sealed_and_listed_by_name(connectors: Connectors) -> None:
    made = await connectors.create(
        "default", "warehouse", Values({"PGPASSWORD": PASSWORD}, {"tls/ca.pem": b"PEM"})
    )
    assert (made.env_names, made.file_paths) == (("PGPASSWORD",), ("tls/ca.pem",))
    assert PASSWORD.encode() not in made.sealed and PASSWORD not in repr(made)
    [listed] = await connectors.list("default")
    assert listed.name == "warehouse" and listed.sealed == made.sealed
    with pytest.raises(Conflict):
        await connectors.create("default", "warehouse", Values({"A": "1"}))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (Values(), "at least one"),
        (Values({"PATH": "/x"}), "reserved"),
        (Values({"BAPONI_X": "1"}), "reserved"),
        (Values({"lower": "1"}), "uppercase"),
        (Values({"A": "x\x00y"}), "control characters"),
        (Values({"A": "x" * 5000}), "at most 4096"),
        (Values(files={"../x": b""}), "relative path"),
        (Values(files={"a/../x": b""}), "relative path"),
        (Values(files={".hidden": b""}), "relative path"),
        (Values(files={"a//b": b""}), "relative path"),
        (Values(files={"a/b/c/d/e": b""}), "relative path"),
        (Values(files={"a": b"", "a/b": b""}), "also a directory"),
        (Values(files={"big": b"x" * ((1 << 20) + 1)}), "larger than"),
        (Values({f"V{i}": "1" for i in range(51)}), "at most 50"),
    ],
)
async def test_bad_values_are_refused(connectors: Connectors, values: Values, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        await connectors.create("default", "c", values)
    assert await connectors.list("default") == []


@pytest.mark.parametrize("name", ["UPPER", "-x", "a.b", "a/b", "", "x" * 64, ".."])
async def test_bad_names_are_refused(connectors: Connectors, name: str) -> None:
    with pytest.raises(ValidationError, match="connector name"):
        await connectors.create("default", name, Values({"A": "1"}))


async def test_a_key_receives_what_it_is_bound_to(connectors: Connectors) -> None:
    admin = Admin(connectors.store)
    await connectors.create("default", "db", Values({"DB": PASSWORD}, {"ca.pem": b"CA"}))
    await connectors.create("default", "api", Values({"API_TOKEN": "t"}))
    bound, _ = await admin.create_key(connectors=["db", "api"])
    free, _ = await admin.create_key()
    got = await connectors.for_key(bound.id)
    assert got.names == ("api", "db")
    assert dict(got.env) == {"DB": PASSWORD, "API_TOKEN": "t"}
    assert dict(got.files) == {"db/ca.pem": b"CA"}
    assert PASSWORD not in repr(got)
    assert await connectors.for_key(free.id) == Injection()

    await connectors.rotate("default", "db", Values({"DB": "new"}))
    got = await connectors.for_key(bound.id)
    assert got.env["DB"] == "new" and dict(got.files) == {}

    await connectors.bind("default", bound.id, ["api"], bound=False)
    assert (await connectors.for_key(bound.id)).names == ("db",)
    await connectors.delete("default", "db")
    assert await connectors.for_key(bound.id) == Injection()
    with pytest.raises(NotFound):
        await connectors.delete("default", "db")


async def test_two_connectors_setting_one_variable_cannot_be_injected(
    connectors: Connectors,
) -> None:
    await connectors.create("default", "a", Values({"TOKEN": "1"}))
    await connectors.create("default", "b", Values({"TOKEN": "2"}))
    key, _ = await Admin(connectors.store).create_key(connectors=["a", "b"])
    with pytest.raises(CredentialError, match="TOKEN is set twice"):
        await connectors.for_key(key.id)


async def test_organisations_stay_apart(connectors: Connectors) -> None:
    admin = Admin(connectors.store)
    await admin.create_org("other")
    await connectors.create("default", "db", Values({"DB": PASSWORD}))
    with pytest.raises(NotFound, match="connector db not found in organisation other"):
        await admin.create_key("other", connectors=["db"])
    stranger, _ = await admin.create_key("other")
    with pytest.raises(NotFound, match=r"key \S+ not found in organisation default"):
        await connectors.bind("default", stranger.id, ["db"], bound=True)
    # Even a binding written past the service's checks gives nothing across organisations.
    [db] = await connectors.list("default")
    await connectors.store.bind_connectors(stranger.id, [db.id])
    assert await connectors.for_key(stranger.id) == Injection()


async def test_a_failed_binding_leaves_no_key(connectors: Connectors) -> None:
    admin = Admin(connectors.store)
    with pytest.raises(NotFound):
        await admin.create_key(name="half", connectors=["missing"])
    org = await admin.org("default")
    assert [k for k in await connectors.store.list_keys(org.id) if k.name == "half"] == []


async def test_reseal_changes_the_key_and_keeps_the_values(connectors: Connectors) -> None:
    await connectors.create("default", "db", Values({"DB": PASSWORD}))
    key, _ = await Admin(connectors.store).create_key(connectors=["db"])
    before = connectors.keyring.keys()
    assert await connectors.reseal() == 1
    assert connectors.keyring.keys() != before and len(connectors.keyring.keys()) == 1
    assert (await connectors.for_key(key.id)).env["DB"] == PASSWORD


async def test_a_key_has_a_bounded_number_of_connectors(connectors: Connectors) -> None:
    admin = Admin(connectors.store)
    names = [f"c{i}" for i in range(17)]
    for name in names:
        await connectors.create("default", name, Values({"A": "1"}))
    with pytest.raises(ValidationError, match="at most 16 connectors"):
        await admin.create_key(connectors=names)
    key, _ = await admin.create_key(connectors=names[:16])
    await connectors.bind("default", key.id, names[:16], bound=True)  # already bound: fine
    with pytest.raises(ValidationError, match="at most 16 connectors"):
        await connectors.bind("default", key.id, names[16:], bound=True)
