"""Every managed volume is a filesystem of its own on a root server, with a quota or not: the
sandbox's mountinfo shows no host path; a volume made as a plain directory (the old layout,
or an operator's copy) is moved into its filesystem with its files, links and modes; what
the directory holds never writes through a link in the image."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from baponi_core._sandbox.rootfs import STORAGE_UID
from tests.harness import Server, cli, org_id_of, start_server, stop_server, unique
from tests.storage.test_volumes import volume_id

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")

MOUNTINFO = """
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    if fields[4] == '/data/SLUG':
        print(fields[3])
print(open('/proc/self/mountinfo').read())
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    found = start_server(tmp_path_factory.mktemp("volume-fs") / "home")
    yield found
    stop_server(found)


def execute(server: Server, slug: str, code: str) -> dict[str, object]:
    key = cli(server.home, "keys", "create", "--volume", slug).split()[-1]
    with server.client(key) as api:
        body: dict[str, object] = api.post("/v1/sandbox/execute", json={"code": code}).json()
    return body


def directory_volume(server: Server, slug: str) -> tuple[Path, str]:
    """A new volume and its directory, made on disk as servers made every volume before."""
    vol = volume_id(cli(server.home, "volumes", "create", slug))
    root = server.home / "volumes" / org_id_of(server.home) / vol
    root.mkdir(parents=True, mode=0o700)
    return root, vol


def test_a_volume_without_a_quota_shows_no_host_path_in_mountinfo(server: Server) -> None:
    slug = unique("plain")
    vol = volume_id(cli(server.home, "volumes", "create", slug))
    result = execute(server, slug, MOUNTINFO.replace("SLUG", slug))
    assert result["success"], result
    root, rest = str(result["stdout"]).split("\n", 1)
    assert root == "/"  # the root of a filesystem of its own, not a directory on the host
    for needle in (str(server.home), org_id_of(server.home), vol):
        assert needle not in rest
    assert (server.home / "volumes" / org_id_of(server.home) / f"{vol}.img").exists()


def test_a_directory_volume_moves_into_its_filesystem_with_files_links_and_modes(
    server: Server,
) -> None:
    slug = unique("legacy")
    root, vol = directory_volume(server, slug)
    (root / "sub").mkdir(mode=0o750)
    (root / "sub" / "data.txt").write_text("kept")
    (root / "sub" / "data.txt").chmod(0o640)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    os.link(root / "run.sh", root / "again.sh")
    (root / "link").symlink_to("/etc/hostname")  # copied as a link, never followed
    (root / "dangling").symlink_to("/nowhere")
    os.mkfifo(root / "pipe")  # copied as a FIFO, never read
    subprocess.run(["chown", "-R", "-h", f"{STORAGE_UID}:{STORAGE_UID}", str(root)], check=True)
    code = (
        "import os, stat\n"
        "os.chdir('/data/SLUG')\n"
        "print(open('sub/data.txt').read(), os.readlink('link'), os.readlink('dangling'))\n"
        "print(oct(os.stat('sub').st_mode & 0o777), oct(os.stat('sub/data.txt').st_mode & 0o777),"
        " oct(os.stat('run.sh').st_mode & 0o777))\n"
        "print(os.stat('run.sh').st_ino == os.stat('again.sh').st_ino,"
        " stat.S_ISFIFO(os.lstat('pipe').st_mode))\n"
    ).replace("SLUG", slug)
    result = execute(server, slug, code)
    assert result["stdout"] == "kept /etc/hostname /nowhere\n0o750 0o640 0o755\nTrue True\n"
    assert list(root.iterdir()) == []  # in the host's view: all moved into the image
    assert root.with_name(f"{vol}.img").exists()
    assert not root.with_name(f".{vol}.new").exists()


def test_files_put_in_the_directory_later_never_write_through_a_link_in_the_image(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("host file")
    server = start_server(tmp_path / "home")
    try:
        slug = "linked"
        vol = volume_id(cli(server.home, "volumes", "create", slug))
        plant = f"import os\nos.symlink({str(victim)!r}, '/data/{slug}/a')\nprint('ok')"
        assert execute(server, slug, plant)["stdout"] == "ok\n"
        stop_server(server)  # its mounts go with it: the host directory shows again
        root = server.home / "volumes" / org_id_of(server.home) / vol
        assert list(root.iterdir()) == []
        (root / "a").write_text("operator's")  # an operator's copy, of the same name
        os.chown(root / "a", STORAGE_UID, STORAGE_UID)
        server = start_server(server.home)
        read = f"import os\nprint(os.path.islink('/data/{slug}/a'), open('/data/{slug}/a').read())"
        assert execute(server, slug, read)["stdout"] == "False operator's\n"
        assert victim.read_text() == "host file"
    finally:
        stop_server(server)
