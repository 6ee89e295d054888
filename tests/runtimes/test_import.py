"""``baponi runtimes import``, ``list`` and ``delete`` on a runtimes directory of the test's
own, with images the tests make: every source form, hostile layers kept inside the
runtime's directory, refusals that leave nothing behind."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.harness import BAPONI, import_runtime
from tests.runtimes.images import (
    BUSYBOX,
    Entry,
    Image,
    busybox_layer,
    directory,
    docker_archive,
    file,
    oci_archive,
    symlink,
    write_layout,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="images are unpacked as root here")


def runtimes_cli(
    runtimes: Path, *args: str, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    where = ["--runtimes", str(runtimes)] + (["--home", str(home)] if home else [])
    return subprocess.run(
        [*BAPONI, *args, *where], capture_output=True, text=True, timeout=300, check=False
    )


def simple(marker: str = "one") -> Image:
    return Image(
        [busybox_layer(), [file("marker", marker)]], {"PATH": "/bin", "MARKER": marker}, "/work"
    )


def generation(runtimes: Path, name: str) -> Path:
    (only,) = [p for p in (runtimes / name).iterdir()]
    return only


def visible(runtimes: Path) -> list[str]:
    return sorted(os.listdir(runtimes))


def test_every_source_form(tmp_path: Path) -> None:
    runtimes = tmp_path / "runtimes"
    layout = write_layout(simple(), tmp_path / "layout", tag="v1")
    sources = {
        "plain-dir": str(layout),
        "oci-tag": f"oci:{layout}:v1",
        "oci-archive": f"oci-archive:{oci_archive(layout, tmp_path / 'image.tar')}",
        "docker-archive": str(docker_archive(simple(), tmp_path / "docker.tar")),
    }
    for name, source in sources.items():
        said = import_runtime(runtimes, name, source)
        assert f"imported runtime {name}" in said and "languages bash" in said
        rootfs = generation(runtimes, name) / "rootfs"
        assert (rootfs / "marker").read_text() == "one"
        assert (rootfs / "work").is_dir()  # its WorkingDir, made
    listing = runtimes_cli(runtimes, "runtimes", "list", home=tmp_path / "home")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert set(lines) == set(sources)
    assert "languages=bash" in lines["plain-dir"] and "profiles=-" in lines["plain-dir"]
    size = re.search(r"size=([0-9.]+)M", lines["plain-dir"])
    busybox = os.stat(BUSYBOX).st_size / (1 << 20)
    assert size is not None and busybox <= float(size.group(1)) < busybox + 0.5
    assert visible(runtimes) == sorted(sources)  # no staging left


def test_a_name_is_replaced_only_when_asked(tmp_path: Path) -> None:
    runtimes = tmp_path / "runtimes"
    import_runtime(runtimes, "img", str(write_layout(simple("one"), tmp_path / "one")))
    first = generation(runtimes, "img")
    again = runtimes_cli(
        runtimes, "runtimes", "import", "img", str(write_layout(simple("two"), tmp_path / "two"))
    )
    assert again.returncode == 1
    assert again.stderr.strip() == "baponi: runtime img exists; import with --replace to replace it"
    assert generation(runtimes, "img") == first
    import_runtime(runtimes, "img", str(tmp_path / "two"), "--replace")
    second = generation(runtimes, "img")  # the old one went: no sandbox held it
    assert second != first and (second / "rootfs" / "marker").read_text() == "two"
    assert visible(runtimes) == ["img"]


def hostile(sentinels: Path) -> Image:
    """Each trick a layer can play, aimed at ``sentinels`` (a host directory)."""
    up = "../" * 12 + str(sentinels).lstrip("/")
    return Image(
        [
            [
                *busybox_layer(),
                directory("etc"),
                file("etc/shadow", "the image's own shadow"),
                directory("sys"),
                file("sys/fake", "a sysfs of its own, for code that trusts /sys"),
            ],
            [
                symlink("abs-link", str(sentinels)),  # a link outside, then files through it
                symlink("rel-link", up),
                file(f"{up}/.wh.sentinel", ""),  # a whiteout of a host file, by ..
                file(f"{sentinels}/.wh.sentinel", ""),  # and by an absolute name
                file(f"{up}/dotdot-written", "x"),
                file(f"{sentinels}/absolute-written", "x"),
                Entry("host-shadow", tarfile.LNKTYPE, link="/etc/shadow"),  # a hard link
                Entry("dev-null", tarfile.CHRTYPE, mode=0o666, device=(1, 3)),
                Entry("dev-sda", tarfile.BLKTYPE, mode=0o660, device=(8, 0)),
                Entry("a-fifo", tarfile.FIFOTYPE, mode=0o666),
                file("bin/suid", b"#!/bin/sh\n", 0o4755),
                file("bin/sgid", b"#!/bin/sh\n", 0o2755),
                directory("sgid-dir"),
            ],
            [
                file("abs-link/through-abs-link", "x"),
                file("rel-link/through-rel-link", "x"),
                Entry("sgid-dir", tarfile.DIRTYPE, mode=0o2775),
            ],
        ],
        {"PATH": "/bin"},
    )


def host_state(sentinels: Path) -> dict[str, object]:
    shadow = os.stat("/etc/shadow")
    return {
        "sentinels": sorted(os.listdir(sentinels)),
        "sentinel": (sentinels / "sentinel").read_text(),
        "shadow": (shadow.st_ino, shadow.st_nlink, shadow.st_mtime_ns, shadow.st_size),
    }


def test_hostile_layers_stay_inside_the_runtime(tmp_path: Path) -> None:
    sentinels = tmp_path / "host"
    sentinels.mkdir()
    (sentinels / "sentinel").write_text("keep")
    before = host_state(sentinels)
    runtimes = tmp_path / "runtimes"
    import_runtime(runtimes, "hostile", str(write_layout(hostile(sentinels), tmp_path / "layout")))
    assert host_state(sentinels) == before  # nothing created, changed or removed outside
    rootfs = generation(runtimes, "hostile") / "rootfs"
    inside = rootfs / str(sentinels).lstrip("/")
    # What was aimed at the host landed in the image's own copy of that path.
    assert sorted(os.listdir(inside)) == [
        "absolute-written",
        "dotdot-written",
        "through-abs-link",
        "through-rel-link",
    ]
    assert (rootfs / "host-shadow").read_text() == "the image's own shadow"
    # The image's own shadow file and /sys are removed at import (scrub.REMOVED_PATHS).
    assert not (rootfs / "etc/shadow").exists() and not (rootfs / "sys").exists()
    for name in ("dev-null", "dev-sda"):  # umoci --rootless makes no device: an empty file
        info = (rootfs / name).lstat()
        assert stat.S_ISREG(info.st_mode) and info.st_size == 0
    assert not os.path.lexists(rootfs / "a-fifo")
    modes = {}
    for path in [rootfs, *rootfs.rglob("*")]:
        info = path.lstat()
        assert not stat.S_ISCHR(info.st_mode) and not stat.S_ISBLK(info.st_mode)
        assert not stat.S_ISFIFO(info.st_mode) and not stat.S_ISSOCK(info.st_mode)
        modes[path.relative_to(rootfs).as_posix()] = info.st_mode
        assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID), path
    assert stat.S_IMODE(modes["bin/suid"]) == 0o755 and stat.S_IMODE(modes["sgid-dir"]) == 0o775
    # The links stay links, resolved in a sandbox against its own root.
    assert os.readlink(rootfs / "abs-link") == str(sentinels)


def test_a_link_to_a_file_the_image_lacks_fails_and_leaves_nothing(tmp_path: Path) -> None:
    sentinels = tmp_path / "host"
    sentinels.mkdir()
    (sentinels / "sentinel").write_text("keep")
    before = host_state(sentinels)
    image = Image(
        [busybox_layer(), [Entry("stolen", tarfile.LNKTYPE, link=str(sentinels / "sentinel"))]],
        {"PATH": "/bin"},
    )
    runtimes = tmp_path / "runtimes"
    done = runtimes_cli(
        runtimes, "runtimes", "import", "bad", str(write_layout(image, tmp_path / "layout"))
    )
    assert done.returncode == 1
    assert done.stderr.startswith("baponi: cannot unpack the image: ")
    assert visible(runtimes) == []  # no runtime, no staging directory
    assert host_state(sentinels) == before


def test_an_image_without_an_interpreter_is_refused(tmp_path: Path) -> None:
    image = Image([[directory("bin"), file("bin/tool", b"\x7fELF", 0o755)]], {}, labels={})
    runtimes = tmp_path / "runtimes"
    done = runtimes_cli(
        runtimes, "runtimes", "import", "empty", str(write_layout(image, tmp_path / "l"))
    )
    assert done.returncode == 1
    assert "the image has no interpreter" in done.stderr
    assert visible(runtimes) == []
    missing = Image(
        [busybox_layer()], {}, labels={"org.baponi.interpreter.python": "/usr/bin/python3"}
    )
    done = runtimes_cli(
        runtimes, "runtimes", "import", "liar", str(write_layout(missing, tmp_path / "m"))
    )
    assert done.returncode == 1
    assert "/usr/bin/python3 is not an executable file in the image" in done.stderr
    done = runtimes_cli(runtimes, "runtimes", "import", "none", str(tmp_path / "nowhere"))
    assert done.returncode == 1 and "no such directory or file" in done.stderr
    assert visible(runtimes) == []


def test_profiles_name_runtimes_and_keep_them(tmp_path: Path) -> None:
    runtimes, home = tmp_path / "runtimes", tmp_path / "home"
    import_runtime(runtimes, "img", str(write_layout(simple(), tmp_path / "layout")))
    unknown = runtimes_cli(runtimes, "profiles", "set", "p", "--runtime", "nope", home=home)
    assert unknown.returncode == 1
    assert (
        unknown.stderr.strip()
        == "baponi: runtime nope is not installed: baponi runtimes import nope SOURCE"
    )
    named = runtimes_cli(runtimes, "profiles", "set", "p", "--runtime", "img", home=home)
    assert named.returncode == 0 and named.stdout.strip().endswith("runtime=img network=none")
    listing = runtimes_cli(runtimes, "runtimes", "list", home=home)
    assert "profiles=default/p" in listing.stdout
    refused = runtimes_cli(runtimes, "runtimes", "delete", "img", home=home)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "baponi: runtime img is used by profile(s) default/p"
    assert visible(runtimes) == ["img"]
    import_runtime(runtimes, "default", "host:")
    runtimes_cli(runtimes, "profiles", "set", "p", "--runtime", "default", home=home)
    deleted = runtimes_cli(runtimes, "runtimes", "delete", "img", home=home)
    assert deleted.returncode == 0, deleted.stderr
    assert visible(runtimes) == ["default"]
    again = runtimes_cli(runtimes, "runtimes", "delete", "img", home=home)
    assert again.returncode == 1 and again.stderr.strip() == "baponi: runtime img not found"
