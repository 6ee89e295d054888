"""Volumes and storage connections: the store, the admin service, the operator CLI, and
their mounts at /data/<slug>/ in real bubblewrap sandboxes (run by a SandboxRuntime of
this test process, on a thread of its own: the runtime's mount namespace stays there)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest

from baponi_core.errors import Conflict, NotFound, ValidationError
from baponi_core.ids import hash_key
from baponi_core.records import Volume
from baponi_core.sandbox import (
    CodeRun,
    Mount,
    MountError,
    Outcome,
    SandboxError,
    SandboxRuntime,
    run_code,
    volume_mounts,
)
from baponi_core.sandbox.libc import call
from baponi_core.services.admin import Admin
from baponi_core.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore
from tests.harness import BAPONI, cli

SANDBOX_UID = 64000
PR_SET_CHILD_SUBREAPER = 36


# -- store ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_volumes_round_trip_and_bind_to_keys(store: SqliteStore) -> None:
    admin = Admin(store)
    acme = await admin.create_org("acme")
    other = await admin.create_org("other")
    reports = await admin.create_volume("acme", "reports")
    archive = await admin.create_volume("acme", "archive", read_only=True)
    lake = await admin.create_volume(
        "acme", "lake", url="s3://bucket/pre", options={"key": "AK", "secret": "SK"}
    )
    await admin.create_volume("other", "reports")  # the same slug in another organisation

    assert await store.get_volume(acme.id, "lake") == lake
    assert await store.get_volume(acme.id, "archive") == archive and archive.read_only
    assert await store.get_volume(other.id, "lake") is None  # scoped to the organisation
    assert [v.slug for v in await store.list_volumes(acme.id)] == ["archive", "lake", "reports"]
    assert lake.options == {"key": "AK", "secret": "SK"} and lake.is_connection
    assert "SK" not in repr(lake)  # credentials never reach a log line

    key, secret = await admin.create_key("acme", "k", volumes=["reports", "archive"])
    await store.bind_volumes(key.id, [lake.id, reports.id])  # binding twice is harmless
    principal = await store.find_key(hash_key(secret))
    assert principal is not None
    assert [v.slug for v in principal.volumes] == ["archive", "lake", "reports"]
    assert principal.volumes[1].options == {"key": "AK", "secret": "SK"}
    assert await store.key_volumes(acme.id) == {key.id: ["archive", "lake", "reports"]}

    assert await store.delete_volume(acme.id, "lake") is True
    assert await store.delete_volume(acme.id, "lake") is False
    assert await store.delete_volume(other.id, "archive") is False  # not theirs
    principal = await store.find_key(hash_key(secret))
    assert principal is not None and [v.slug for v in principal.volumes] == ["archive", "reports"]
    with pytest.raises(sqlite3.IntegrityError):  # UNIQUE (org_id, slug)
        await store.create_volume(dataclasses.replace(reports, id="vol_dup"))


@pytest.mark.anyio
async def test_key_without_volumes_has_none(store: SqliteStore) -> None:
    admin = Admin(store)
    await admin.ensure_default_org()
    await admin.create_volume("default", "unbound")
    _, secret = await admin.create_key()
    principal = await store.find_key(hash_key(secret))
    assert principal is not None and principal.volumes == ()


@pytest.mark.anyio
async def test_database_of_schema_2_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as old:  # a database as release 2 left it, with a key
        for script in MIGRATIONS[:2]:
            old.executescript(script)
        old.execute(
            "INSERT INTO orgs (id, name, max_concurrency, created_at) "
            "VALUES ('org_1', 'acme', 3, 1.0)"
        )
        old.execute(
            "INSERT INTO profiles VALUES ('prf_1', 'org_1', 'default', 1, 1024, 256, 3600, 256, "
            "1024)"
        )
        old.execute(
            "INSERT INTO api_keys VALUES ('key_1', 'org_1', 'prf_1', 'old', 'sk-local-x', ?, "
            "2.0, NULL)",
            (hash_key("sk-local-old"),),
        )
        old.execute("PRAGMA user_version=2")
    assert SCHEMA_VERSION == 3
    store = SqliteStore(path)
    await store.open()
    try:
        principal = await store.find_key(hash_key("sk-local-old"))
        assert principal is not None and principal.volumes == ()
        volume = Volume("vol_1", "org_1", "data", False, 3.0)
        await store.create_volume(volume)
        await store.bind_volumes("key_1", ["vol_1"])
        principal = await store.find_key(hash_key("sk-local-old"))
        assert principal is not None and principal.volumes == (volume,)
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# -- admin ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("slug", ["Reports", "-x", "a_b", "a.b", "x" * 64, "", "a/b"])
async def test_bad_slugs_are_refused(store: SqliteStore, slug: str) -> None:
    admin = Admin(store)
    await admin.ensure_default_org()
    with pytest.raises(ValidationError, match="lower-case letters"):
        await admin.create_volume("default", slug)
    assert await admin.list_volumes("default") == []


@pytest.mark.anyio
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
    store: SqliteStore, url: str, options: dict[str, Any], message: str
) -> None:
    admin = Admin(store)
    await admin.ensure_default_org()
    with pytest.raises(ValidationError, match=message):
        await admin.create_volume("default", "lake", url=url, options=options)


@pytest.mark.anyio
async def test_keys_bind_only_known_volumes_of_their_org(store: SqliteStore) -> None:
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


# -- CLI ------------------------------------------------------------------------------------


def run(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BAPONI, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_cli_volumes_create_list_delete_and_bind(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "volumes", "create", "reports").startswith("created volume reports (vol_")
    assert "read-only" in cli(home, "volumes", "create", "archive", "--read-only")
    listing = cli(home, "volumes", "list").splitlines()
    assert [line.split()[0] for line in listing] == ["archive", "reports"]
    assert listing[0].endswith("read-only") and listing[1].endswith("read-write")

    secret = cli(
        home, "keys", "create", "--name", "vk", "--volume", "reports", "--volume", "archive"
    )
    assert secret.startswith("sk-local-") and len(secret.splitlines()) == 1
    keys = cli(home, "keys", "list")
    assert "  vk  profile=default  volumes=archive,reports" in keys

    unknown = run(home, "keys", "create", "--name", "nope", "--volume", "missing")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "baponi: volume missing not found in organisation default" in unknown.stderr
    assert " nope " not in cli(home, "keys", "list")

    bad = run(home, "volumes", "create", "Bad_Slug")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "lower-case letters, digits or '-'" in bad.stderr

    deleted = cli(home, "volumes", "delete", "reports").splitlines()
    assert deleted == [
        "deleted volume reports",
        "(its files go at the server's next sweep: at its start, then every 10 minutes)",
    ]
    assert "volumes=archive\n" in cli(home, "keys", "list") + "\n"  # unbound from the key
    again = run(home, "volumes", "delete", "reports")
    assert again.returncode == 1 and "volume reports not found" in again.stderr
    elsewhere = run(home, "volumes", "list", "--org", "nowhere")
    assert elsewhere.returncode == 1 and "organisation nowhere not found" in elsewhere.stderr


def test_cli_connections_never_show_their_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli(home, "orgs", "create", "acme")
    made = run(
        home,
        "connections",
        "create",
        "lake",
        "--org",
        "acme",
        "--url",
        "s3://bucket/prefix",
        "--option",
        "endpoint_url=http://127.0.0.1:9",
        "--option-from-env",
        "secret=LAKE_SECRET",
        env={"LAKE_SECRET": "very-secret-value"},
    )
    assert made.returncode == 0, made.stderr
    assert "very-secret-value" not in made.stdout
    listing = cli(home, "connections", "list", "--org", "acme")
    assert listing.split() == [
        "lake",
        listing.split()[1],
        "read-write",
        "s3://bucket/prefix",
        "options=endpoint_url,secret",
    ]
    assert cli(home, "volumes", "list", "--org", "acme") == ""  # volumes list shows volumes
    with sqlite3.connect(home / "baponi.db") as db:  # kept for the server, which needs them
        stored = json.loads(db.execute("SELECT options FROM volumes").fetchone()[0])
    assert stored == {"endpoint_url": "http://127.0.0.1:9", "secret": "very-secret-value"}

    wrong_kind = run(home, "keys", "create", "--org", "acme", "--volume", "lake")
    assert wrong_kind.returncode == 1
    assert "lake is a storage connection, not a volume" in wrong_kind.stderr
    cli(home, "keys", "create", "--org", "acme", "--name", "ck", "--connection", "lake")
    assert "  ck  profile=default  connections=lake" in cli(home, "keys", "list", "--org", "acme")
    missing_env = run(
        home, "connections", "create", "x", "--url", "s3://b", "--option-from-env", "k=NOT_SET_X"
    )
    assert missing_env.returncode != 0 and "NOT_SET_X is not set" in missing_env.stderr
    assert run(home, "volumes", "delete", "lake", "--org", "acme").returncode == 1
    assert cli(home, "connections", "delete", "lake", "--org", "acme").splitlines() == [
        "deleted storage connection lake",
        "(its cached copy goes at the server's next sweep: at its start, then every 10 minutes)",
    ]
    assert cli(home, "connections", "list", "--org", "acme") == ""


def test_cli_help_has_examples() -> None:
    for group in ("volumes", "connections"):
        done = subprocess.run(
            [*BAPONI, group, "create", "--help"], capture_output=True, text=True, check=True
        )
        assert f"baponi {group} create" in done.stdout and "examples:" in done.stdout
    done = subprocess.run([*BAPONI, "keys", "create", "--help"], capture_output=True, text=True)
    assert "--volume SLUG" in done.stdout and "--connection SLUG" in done.stdout


# -- mounts: pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "target"),
    [
        (("..",), "/data/v"),
        (("a/b",), "/data/v"),
        (("",), "/data/v"),
        ((), "/data"),
        ((), "/etc/v"),
        ((), "/data/v/../w"),
        ((), "data/v"),
        ((), "/data//v"),
    ],
)
def test_mount_refuses_unsafe_names_and_targets(names: tuple[str, ...], target: str) -> None:
    with pytest.raises(ValueError, match="mount"):
        Mount(Path("/x"), names, target, False)


def test_volume_mounts_follow_sub_paths() -> None:
    vols = [("b", Path("/s/b"), True), ("a", Path("/s/a"), False)]
    assert volume_mounts(vols) == (
        Mount(Path("/s/a"), (), "/data/a", False),
        Mount(Path("/s/b"), (), "/data/b", True),
    )
    narrowed = volume_mounts(vols, ["/data/b/q3/eu", "/data/b/q3/eu/x", "/data/b/q4/"])
    assert narrowed == (
        Mount(Path("/s/b"), ("q3", "eu"), "/data/b/q3/eu", True),
        Mount(Path("/s/b"), ("q4",), "/data/b/q4", True),
    )
    assert volume_mounts(vols, ["/data/a", "/data/a/x"]) == (
        Mount(Path("/s/a"), (), "/data/a", False),
    )
    for bad in ("/data/c/x", "/home/baponi", "/data", "/data/a/../b"):
        with pytest.raises(ValueError):
            volume_mounts(vols, [bad])


# -- mounts in real sandboxes ------------------------------------------------------------------


@dataclasses.dataclass
class Sandboxes:
    portal: anyio.from_thread.BlockingPortal
    runtime: SandboxRuntime
    shared: Path  # the directory shared with sandboxes; volumes live below it

    def volume(self, files: dict[str, str] | None = None) -> Path:
        """A fresh volume directory, owned by the sandbox uid as the server keeps them."""
        org = self.shared / "org_test"
        org.mkdir(mode=0o711, exist_ok=True)
        path = org / f"vol-{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=0o700)
        for name, text in (files or {}).items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(text)
        if os.geteuid() == 0:
            for item in [path, *path.rglob("*")]:
                os.chown(item, SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)
        return path

    def run(self, code: str, *mounts: Mount) -> Outcome:
        job = CodeRun(
            language="python", code=textwrap.dedent(code).encode(), timeout_s=20, mounts=mounts
        )
        return self.portal.call(run_code, self.runtime, job)

    def report(self, code: str, *mounts: Mount) -> Any:
        """Run ``code`` that prints one JSON document; return it."""
        outcome = self.run(code, *mounts)
        assert outcome.exit_code == 0, outcome
        return json.loads(outcome.stdout)


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandboxes]:
    root = tmp_path_factory.mktemp("volumes-runtime")
    shared = root / "volumes"
    shared.mkdir()
    with anyio.from_thread.start_blocking_portal() as portal:
        opened = portal.wrap_async_context_manager(SandboxRuntime.open(root / "run", [shared]))
        try:
            with opened as runtime:
                yield Sandboxes(portal, runtime, shared)
        finally:
            with contextlib.suppress(OSError):  # the runtime made this test process one
                call("prctl", PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0, what="prctl")


PROBE_ERRNO = """
import errno, json, os
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
"""


def test_writable_volume_persists_on_the_host(sandboxes: Sandboxes) -> None:
    host = sandboxes.volume({"in.txt": "from host"})
    mount = Mount(host, (), "/data/work", False)
    seen = sandboxes.report(
        """
        import json, os
        os.makedirs("/data/work/out/deep")
        with open("/data/work/out/deep/result.txt", "w") as f:
            f.write("from sandbox")
        print(json.dumps({"data": os.listdir("/data"), "in": open("/data/work/in.txt").read()}))
        """,
        mount,
    )
    assert seen == {"data": ["work"], "in": "from host"}
    written = host / "out" / "deep" / "result.txt"
    assert written.read_text() == "from sandbox"
    if os.geteuid() == 0:
        assert written.stat().st_uid == SANDBOX_UID
    again = sandboxes.report(
        "import json; print(json.dumps(open('/data/work/out/deep/result.txt').read()))", mount
    )
    assert again == "from sandbox"


def test_read_only_volume_refuses_every_change(sandboxes: Sandboxes) -> None:
    host = sandboxes.volume({"keep.txt": "original", "sub/inner.txt": "inner"})
    seen = sandboxes.report(
        PROBE_ERRNO
        + """
d = "/data/ref"
print(json.dumps({
    "read": open(f"{d}/sub/inner.txt").read(),
    "create": attempt(lambda: open(f"{d}/new.txt", "w")),
    "append": attempt(lambda: open(f"{d}/keep.txt", "a")),
    "chmod": attempt(lambda: os.chmod(f"{d}/keep.txt", 0o777)),
    "chmod_root": attempt(lambda: os.chmod(d, 0o777)),
    "rename": attempt(lambda: os.rename(f"{d}/keep.txt", f"{d}/moved.txt")),
    "unlink": attempt(lambda: os.unlink(f"{d}/keep.txt")),
    "rmdir": attempt(lambda: os.rmdir(f"{d}/sub")),
    "mkdir": attempt(lambda: os.mkdir(f"{d}/newdir")),
    "symlink": attempt(lambda: os.symlink("/etc", f"{d}/link")),
    "utime": attempt(lambda: os.utime(f"{d}/keep.txt", (1, 1))),
    "truncate": attempt(lambda: os.truncate(f"{d}/keep.txt", 0)),
}))
""",
        Mount(host, (), "/data/ref", True),
    )
    assert seen.pop("read") == "inner"
    assert seen == dict.fromkeys(seen, "EROFS"), seen
    assert sorted(p.name for p in host.rglob("*")) == ["inner.txt", "keep.txt", "sub"]
    assert (host / "keep.txt").read_text() == "original"
    assert oct((host / "keep.txt").stat().st_mode & 0o777) != oct(0o777)


def test_sub_path_mount_shows_only_that_directory(sandboxes: Sandboxes) -> None:
    host = sandboxes.volume(
        {"q3/eu/sales.csv": "1,2", "q3/us/secret.csv": "x", "q4/x.csv": "y", "top.txt": "t"}
    )
    seen = sandboxes.report(
        PROBE_ERRNO
        + """
tree = sorted(os.path.join(d, n) for d, ds, fs in os.walk("/data") for n in ds + fs)
print(json.dumps({
    "tree": tree,
    "up": sorted(os.listdir("/data/reports/q3/eu/..")),
    "write_parent": attempt(lambda: open("/data/reports/q3/other.txt", "w")),
    "write_inside": attempt(lambda: open("/data/reports/q3/eu/new.csv", "w").close()),
}))
""",
        *volume_mounts([("reports", host, False)], ["/data/reports/q3/eu"]),
    )
    assert seen["tree"] == [
        "/data/reports",
        "/data/reports/q3",
        "/data/reports/q3/eu",
        "/data/reports/q3/eu/sales.csv",
    ]
    assert seen["up"] == ["eu"]  # the volume's q3/us is not there
    assert seen["write_parent"] == "EROFS"  # the parents are the read-only root's
    assert seen["write_inside"] == "ok"
    assert (host / "q3" / "eu" / "new.csv").exists()


def test_symlink_planted_in_a_sub_path_is_never_followed(sandboxes: Sandboxes) -> None:
    victim = sandboxes.volume({"private.txt": "other volume"})
    host = sandboxes.volume({"q3/real.txt": "r"})
    # Sandboxed code with the whole volume plants links where a later sub_path will look.
    sandboxes.report(
        f"""
        import json, os
        os.symlink("/etc", "/data/v/etc-link")
        os.symlink("../../{victim.name}", "/data/v/q3/eu")
        os.symlink("q3", "/data/v/alias")
        print(json.dumps("planted"))
        """,
        Mount(host, (), "/data/v", False),
    )
    assert (host / "q3" / "eu").is_symlink()
    assert (host / "q3" / "eu" / "private.txt").exists()  # on the host it does lead there
    marker = host / "ran.txt"
    code = f"open({str(Path('/data/v') / 'ran.txt')!r}, 'w')"
    for names in (("etc-link",), ("q3", "eu"), ("alias",), ("alias", "real.txt")):
        narrowed = Mount(host, names, "/data/v/" + "/".join(names), False)
        with pytest.raises(MountError, match="not a directory"):
            sandboxes.run(code, narrowed, Mount(host, (), "/data/w", False))
    with pytest.raises(MountError, match="no such directory"):
        sandboxes.run(code, Mount(host, ("q9",), "/data/v/q9", False))
    assert not marker.exists()  # nothing ran
    assert (victim / "private.txt").read_text() == "other volume"


def test_two_volumes_at_once(sandboxes: Sandboxes) -> None:
    rw = sandboxes.volume()
    ro = sandboxes.volume({"input.txt": "42"})
    seen = sandboxes.report(
        PROBE_ERRNO
        + """
value = open("/data/in/input.txt").read()
open("/data/out/answer.txt", "w").write(value + "!")
print(json.dumps({
    "data": sorted(os.listdir("/data")),
    "into_ro": attempt(lambda: open("/data/in/answer.txt", "w")),
    "mkdir_data": attempt(lambda: os.mkdir("/data/extra")),
}))
""",
        Mount(rw, (), "/data/out", False),
        Mount(ro, (), "/data/in", True),
    )
    assert seen == {"data": ["in", "out"], "into_ro": "EROFS", "mkdir_data": "EROFS"}
    assert (rw / "answer.txt").read_text() == "42!"
    assert sorted(p.name for p in ro.iterdir()) == ["input.txt"]


def test_data_exists_empty_without_mounts(sandboxes: Sandboxes) -> None:
    seen = sandboxes.report(
        PROBE_ERRNO
        + 'print(json.dumps([os.listdir("/data"), attempt(lambda: open("/data/x", "w"))]))'
    )
    assert seen == [[], "EROFS"]


def test_overlapping_or_unshared_mounts_are_refused(sandboxes: Sandboxes, tmp_path: Path) -> None:
    host = sandboxes.volume({"a/b.txt": "x"})
    with pytest.raises(SandboxError, match="overlap"):
        sandboxes.run(
            "", Mount(host, (), "/data/v", False), Mount(host, ("a",), "/data/v/a", False)
        )
    with pytest.raises(SandboxError, match="overlap"):
        sandboxes.run("", Mount(host, (), "/data/v", False), Mount(host, (), "/data/v", True))
    if os.geteuid() == 0:  # as root only shared directories are reachable by the sandbox uid
        outside = tmp_path / "outside"
        outside.mkdir()
        with pytest.raises(MountError, match="not shared"):
            sandboxes.run("", Mount(outside, (), "/data/o", False))
    ok = sandboxes.run(
        "print('fine')", Mount(host, (), "/data/v", False), Mount(host, (), "/data/v-2", True)
    )
    assert ok.stdout == b"fine\n"
