"""Volumes mounted at /data/<slug>/ in real bubblewrap sandboxes, run by a SandboxRuntime of
this test process (on a thread of its own: the runtime's mount namespace stays there):
read-write and read-only mounts, sub_paths, planted links. And the pure parts: which mounts
may be asked for, and how sub_paths narrow them."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest

from baponi_core._sandbox import (
    CodeRun,
    Mount,
    MountError,
    Outcome,
    SandboxError,
    SandboxRuntime,
    run_to_end,
    volume_mounts,
)
from baponi_core._sandbox.rootfs import STORAGE_UID
from tests.harness import ERRNO_PROBE, runtime_on_a_thread, unique

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
        path = org / unique("vol")
        path.mkdir(mode=0o700)
        for name, text in (files or {}).items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(text)
        if os.geteuid() == 0:
            for item in [path, *path.rglob("*")]:
                os.chown(item, STORAGE_UID, STORAGE_UID, follow_symlinks=False)
        return path

    def run(self, code: str, *mounts: Mount) -> Outcome:
        job = CodeRun(
            language="python", code=textwrap.dedent(code).encode(), timeout_s=20, mounts=mounts
        )
        return self.portal.call(run_to_end, self.runtime, job)

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
    with runtime_on_a_thread(root / "run", [shared]) as (portal, runtime):
        yield Sandboxes(portal, runtime, shared)


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
        assert written.stat().st_uid == STORAGE_UID
    again = sandboxes.report(
        "import json; print(json.dumps(open('/data/work/out/deep/result.txt').read()))", mount
    )
    assert again == "from sandbox"


def test_read_only_volume_refuses_every_change(sandboxes: Sandboxes) -> None:
    host = sandboxes.volume({"keep.txt": "original", "sub/inner.txt": "inner"})
    seen = sandboxes.report(
        ERRNO_PROBE
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
        ERRNO_PROBE
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
        ERRNO_PROBE
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
        ERRNO_PROBE
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
