"""The files of deleted volumes go: ``baponi volumes delete`` (another process) only forgets a
volume, and the server sweeps what no volume of its organisations names, at start and then
periodically. Kept: live volumes, thread homes, other servers' organisations in a shared
store, and always a storage connection's own bucket (only its cached copy goes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.emulators import Emulator
from tests.harness import Server, cli, org_id_of, read_store, start_server, stop_server

pytestmark = pytest.mark.slow  # servers of their own, restarted

WRITE_BOTH = (
    "import os\n"
    "for name in os.listdir('/data'):\n"
    "    open(f'/data/{name}/f.txt', 'w').write(name)\n"
    "open('home.txt', 'w').write('thread')\n"
    "print(sorted(os.listdir('/data')))"
)


def ids(home: Path) -> tuple[str, dict[str, str]]:
    """The default organisation's id and its volumes' ids by slug."""
    org = org_id_of(home)
    volumes = read_store(home, lambda store: store.list_volumes(org))
    return org, {volume.slug: volume.id for volume in volumes}


def restarted(server: Server, *args: str, env: dict[str, str] | None = None) -> Server:
    stop_server(server)
    return start_server(server.home, *args, env=env)


def use_volumes(server: Server, *slugs: str, thread: str, connection: str | None = None) -> None:
    flags = [flag for slug in slugs for flag in ("--volume", slug)]
    if connection is not None:
        flags += ["--connection", connection]
        slugs += (connection,)
    key = cli(server.home, "keys", "create", *flags).split()[-1]
    body = {"code": WRITE_BOTH, "thread_id": thread}
    result = server.client(key).post("/v1/sandbox/execute", json=body).json()
    assert result["stdout"] == f"{sorted(slugs)}\n", result


def test_deleted_volumes_files_go_from_local_storage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        for slug in ("keep", "drop"):
            cli(home, "volumes", "create", slug)
        use_volumes(server, "keep", "drop", thread="t1")
        org, volumes = ids(home)
        base = server.volumes / org  # as root each volume is a filesystem the server mounts
        assert (base / volumes["drop"] / "f.txt").read_text() == "drop"
        assert (home / "volumes" / org / f"{volumes['drop']}.img").exists()
        foreign = home / "volumes" / "org_of_another_server" / "vol_x"
        foreign.mkdir(parents=True)
        (foreign / "f.txt").write_text("not ours")

        cli(home, "volumes", "delete", "drop")
        server = restarted(server)
        server.client().get("/ready").raise_for_status()

        assert not (home / "volumes" / org / volumes["drop"]).exists()
        assert not (home / "volumes" / org / f"{volumes['drop']}.img").exists()
        kept = {"source": "volume", "id": "keep", "path": "f.txt"}
        listed_keep = server.client().post("/v1/files/list", json=kept).json()
        assert "files" in listed_keep, listed_keep
        assert [f["path"] for f in listed_keep["files"]] == ["f.txt"]
        assert (foreign / "f.txt").read_text() == "not ours"  # an organisation we do not know
        (thread,) = (home / "threads" / org).glob("*.img")  # its home, a filesystem image
        home_file = {"source": "thread", "id": thread.stem, "path": "home.txt"}
        listed = server.client().post("/v1/files/list", json=home_file).json()
        assert [f["path"] for f in listed["files"]] == ["home.txt"]
        assert "removed the files of 1 deleted volume(s)" in server.log
    finally:
        stop_server(server)


def test_deleted_volumes_go_from_the_bucket_and_connections_only_from_the_cache(
    tmp_path: Path, s3_emulator: Emulator
) -> None:
    storage = s3_emulator.fresh_url()
    lake = s3_emulator.fresh_url()
    fs = s3_emulator.fs()
    args = ("--storage", storage, "--storage-options", json.dumps(s3_emulator.options))
    env = {**os.environ, **s3_emulator.env}
    home = tmp_path / "home"
    server = start_server(home, *args, env=env)
    try:
        cli(home, "volumes", "create", "keep")
        cli(home, "volumes", "create", "drop")
        options = s3_emulator.options
        cli(
            home,
            *("connections", "create", "lake", "--url", lake),
            *("--option", f"key={options['key']}", "--option", f"secret={options['secret']}"),
            *("--option", f"endpoint_url={options['client_kwargs']['endpoint_url']}"),
        )
        use_volumes(server, "keep", "drop", thread="t1", connection="lake")
        org, volumes = ids(home)
        bucket = storage.partition("://")[2]
        fs.invalidate_cache()
        assert fs.cat_file(f"{bucket}/volumes/{org}/{volumes['drop']}/f.txt") == b"drop"
        cache = home / "cache"
        lake_copy = cache / "connections" / org / volumes["lake"]
        assert (lake_copy / "f.txt").exists()

        cli(home, "volumes", "delete", "drop")
        cli(home, "connections", "delete", "lake")
        server = restarted(server, *args, env=env)
        server.client().get("/ready").raise_for_status()
        fs.invalidate_cache()

        assert not fs.exists(f"{bucket}/volumes/{org}/{volumes['drop']}")
        assert not (cache / "server" / "volumes" / org / volumes["drop"]).exists()
        assert fs.cat_file(f"{bucket}/volumes/{org}/{volumes['keep']}/f.txt") == b"keep"
        assert fs.cat_file(f"{bucket}/threads/{org}/t1/home.txt") == b"thread"
        assert not lake_copy.exists()
        assert not lake_copy.with_name(lake_copy.name + ".manifest.json").exists()
        assert fs.cat_file(f"{lake.partition('://')[2]}/f.txt") == b"lake"  # the user's bucket
    finally:
        stop_server(server)
