"""The seed's round trip on each cloud backend, against real emulators on loopback.

A server runs with ``--storage`` pointing into an emulator's bucket: uploads go to the
provider's own pre-signed URL, code reads them after the pull, its output is pushed back,
listed and downloaded from the provider. Sync errors end executions with the mount error.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baponi_core._storage import places, sync
from tests.emulators import Emulator
from tests.harness import Server, cli, start_server, stop_server

pytestmark = pytest.mark.slow  # the emulators and a server on each of them

BACKENDS = ["s3_emulator", "gcs_emulator", "azure_emulator"]


@dataclass
class Cloud:
    emulator: Emulator
    url: str  # the server's --storage
    server: Server

    def fs(self) -> Any:
        return self.emulator.fs()

    def stored(self, org_id: str, thread: str, path: str) -> str:
        return f"{self.url.partition('://')[2]}/threads/{org_id}/{thread}/{path}"


@pytest.fixture(scope="module", params=BACKENDS)
def cloud(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cloud]:
    emulator: Emulator = request.getfixturevalue(request.param)
    url = emulator.fresh_url()
    home = tmp_path_factory.mktemp(emulator.protocol) / "home"
    cloud = Cloud(emulator, url, serve(home, emulator, url))
    yield cloud
    stop_server(cloud.server)


def serve(home: Path, emulator: Emulator, url: str) -> Server:
    options = json.dumps(emulator.options)
    environ = {**os.environ, **emulator.env}
    return start_server(home, "--storage", url, "--storage-options", options, env=environ)


def org_id(cloud: Cloud) -> str:
    (org,) = [line.split()[1] for line in cli(cloud.server.home, "orgs", "list").splitlines()]
    return org


def put(signed: Any, body: bytes) -> httpx.Response:
    headers = {h.name: h.value for h in signed.headers}
    return httpx.put(signed.url, content=body, headers=headers, timeout=30)


def test_seed_workflow_round_trip(cloud: Cloud) -> None:
    sdk = cloud.server.sdk()
    data = b"name,score\nada,3\nbob,5\n"
    upload = sdk.upload_url(
        id="seed", path="data/input.csv", content_length=len(data), content_type="text/csv"
    )
    sent = {h.name: h.value for h in upload.headers}
    if cloud.emulator.protocol == "az":  # a SAS cannot bind the size: the server takes it
        assert upload.url.startswith(cloud.server.url + "/v1/files/signed/")
    else:  # the provider's URL, with the size signed
        assert upload.url.startswith(cloud.emulator.endpoint)
        assert sent.get("Content-Length", sent.get("x-goog-content-length-range")) in (
            str(len(data)),
            f"{len(data)},{len(data)}",
        )
    assert put(upload, data).status_code in (200, 201)

    code = (
        "import csv\nrows = list(csv.DictReader(open('data/input.csv')))\n"
        "total = sum(int(r['score']) for r in rows)\n"
        "open('output/total.txt', 'w').write(str(total)) if __import__('os').makedirs("
        "'output', exist_ok=True) is None else None\nprint(total)"
    )
    result = sdk.execute(code, thread_id="seed")
    assert result.stdout == "8\n", result
    api = cloud.server.client()
    listing = api.post("/v1/files/list", json={"source": "thread", "id": "seed"}).json()
    listed = {f["path"]: (f["size"], f["is_directory"]) for f in listing["files"]}
    assert listed == {
        "data": (0, True),
        "data/input.csv": (len(data), False),
        "output": (0, True),
        "output/total.txt": (1, False),
    }

    download = sdk.download_url(id="seed", path="output/total.txt")
    assert download.url.startswith(cloud.emulator.endpoint)
    assert httpx.get(download.url, timeout=30).content == b"8"


def test_only_changes_are_transferred(cloud: Cloud) -> None:
    sdk = cloud.server.sdk()
    sdk.execute("open('a.txt','w').write('one')\nopen('b.txt','w').write('two')", thread_id="delta")
    fs = cloud.fs()
    org = org_id(cloud)
    first = {p: fs.info(cloud.stored(org, "delta", p))["name"] for p in ("a.txt", "b.txt")}
    assert first
    tag_b = _tag(fs.info(cloud.stored(org, "delta", "b.txt")))
    # Change a.txt only: b.txt's object must not be rewritten.
    sdk.execute("open('a.txt','w').write('uno')", thread_id="delta")
    assert fs.cat_file(cloud.stored(org, "delta", "a.txt")) == b"uno"
    assert _tag(fs.info(cloud.stored(org, "delta", "b.txt"))) == tag_b


def test_deletions_go_both_ways(cloud: Cloud) -> None:
    sdk = cloud.server.sdk()
    api = cloud.server.client()
    sdk.execute(
        "open('keep','w').write('k')\nopen('drop','w').write('d')\nopen('gone','w').write('g')",
        thread_id="del",
    )
    # Deleted by code: the object goes.
    sdk.execute("import os\nos.unlink('drop')", thread_id="del")
    # Deleted through the Files API: the next pull removes the local copy.
    response = api.request(
        "DELETE", "/v1/files", json={"source": "thread", "id": "del", "path": "gone"}
    )
    assert response.json() == {"deleted": True}
    result = sdk.execute("import os\nprint(sorted(os.listdir('.')))", thread_id="del")
    assert result.stdout == "['keep']\n"
    assert [f.path for f in sdk.list_files(id="del")] == ["keep"]


def test_links_made_by_code_are_not_synced(cloud: Cloud) -> None:
    sdk = cloud.server.sdk()
    code = (
        "import os\nos.symlink('/etc/passwd', 'passwd')\nos.symlink('/', 'root')\n"
        "os.mkfifo('fifo')\nopen('real','w').write('r')\nos.link('real', 'twin')"
    )
    assert sdk.execute(code, thread_id="links").success
    fs = cloud.fs()
    org = org_id(cloud)
    stored = {p.rpartition("/")[2] for p in fs.find(cloud.stored(org, "links", ""))}
    # Hard-linked files are skipped too (they could be a link to anything the uid can reach).
    assert "real" not in stored and "twin" not in stored
    assert "passwd" not in stored and "root" not in stored and "fifo" not in stored
    assert all(b"root:" not in fs.cat_file(p) for p in fs.find(cloud.stored(org, "links", "")))


def test_uploads_appear_in_the_next_execution(cloud: Cloud) -> None:
    sdk = cloud.server.sdk()
    sdk.execute("open('v.txt','w').write('old')", thread_id="fresh")
    new = b"new content"
    upload = sdk.upload_url(
        id="fresh", path="v.txt", content_length=len(new), content_type="text/plain"
    )
    assert put(upload, new).status_code in (200, 201)
    assert sdk.execute("print(open('v.txt').read())", thread_id="fresh").stdout == "new content\n"


def test_a_thread_survives_a_lost_cache(cloud: Cloud) -> None:
    """The bucket is the truth: a server with an empty cache brings the files back."""
    sdk = cloud.server.sdk()
    sdk.execute(
        "import os\nos.makedirs('deep/er', exist_ok=True)\nopen('deep/er/f.txt','w').write('kept')",
        thread_id="cache",
    )
    cache = cloud.server.home / "cache"
    (image,) = cache.glob("server/threads/*/cache.img")  # the local copy's filesystem
    stop_server(cloud.server)
    image.unlink()  # its manifest stays: it must not be read as "all deleted"
    assert (image.parent / "cache.manifest.json").exists()
    cloud.server = serve(cloud.server.home, cloud.emulator, cloud.url)
    result = cloud.server.sdk().execute("print(open('deep/er/f.txt').read())", thread_id="cache")
    assert result.stdout == "kept\n"
    # That run's push took nothing for deleted: the bucket still has it.
    stored = cloud.stored(org_id(cloud), "cache", "deep/er/f.txt")
    assert cloud.fs().cat_file(stored) == b"kept"


MANY = (
    "import hashlib, os\n"
    "sizes = [0, 1, 4096] * 24 + [9 * 1024 * 1024]  # over 32 per group; one streamed\n"
    "os.makedirs('many', exist_ok=True)\n"
    "for i, size in enumerate(sizes):\n"
    # not ending in CR, which gcp-storage-emulator drops (see tests/emulators.random_bytes)
    "    open(f'many/{i:02}.bin', 'wb').write(os.urandom(size)[:-1] + b'.' if size else b'')\n"
    "DIGEST\n"
)
DIGEST = (
    "import hashlib, os\n"
    "names = sorted(os.listdir('many'))\n"
    "print(len(names), hashlib.sha256(b''.join(open('many/' + n, 'rb').read() "
    "for n in names)).hexdigest())"
)


def test_many_files_of_every_size_survive_a_lost_cache(cloud: Cloud) -> None:
    """Small files move in concurrent groups, empty ones without a request, large ones
    streamed: all 73 come back byte for byte into an empty cache, in the bucket as written."""
    sdk = cloud.server.sdk()
    written = sdk.execute(MANY.replace("DIGEST", DIGEST), thread_id="many", timeout=60)
    count, digest = written.stdout.split()
    assert count == "73", written
    fs = cloud.fs()
    fs.invalidate_cache()
    stored = fs.find(cloud.stored(org_id(cloud), "many", "many"), detail=True)
    assert sorted(int(info["size"]) for info in stored.values()) == sorted(
        [0, 1, 4096] * 24 + [9 * 1024 * 1024]
    )
    (space,) = (cloud.server.home / "cache").glob("server/threads/*/many")
    shutil.rmtree(space)
    space.with_name("many.manifest.json").unlink()
    again = sdk.execute(DIGEST, thread_id="many", timeout=60)
    assert again.stdout.split() == ["73", digest]


@pytest.mark.parametrize("sent", [b"x" * 99, b"x" * 101], ids=["short", "long"])
def test_azure_uploads_of_another_size_never_reach_the_bucket(
    azure_emulator: Emulator, sent: bytes, tmp_path: Any
) -> None:
    """Through the server, staged: the blob appears only once exactly the signed size came."""
    url = azure_emulator.fresh_url()
    options = json.dumps(azure_emulator.options)
    server = start_server(tmp_path / "home", "--storage", url, "--storage-options", options)
    try:
        sdk = server.sdk()
        upload = sdk.upload_url(id="sized", path="f.bin", content_length=100)
        assert upload.url.startswith(server.url)
        declared = httpx.put(upload.url, content=sent, timeout=30)
        assert declared.status_code == 400, declared.text
        # chunked, so no Content-Length: the staged body is refused when it is counted
        refused = httpx.put(upload.url, content=iter([sent[:50], sent[50:]]), timeout=30)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "validation_error"
        assert (
            "signed size" in refused.json()["message"] or "ended after" in refused.json()["message"]
        )
        stored = f"{url.partition('://')[2]}/threads"
        fs = azure_emulator.fs()
        fs.invalidate_cache()
        assert not [p for p in fs.find(stored) if p.endswith("/f.bin")]
        staging = tmp_path / "home" / "staging"
        assert staging.is_dir() and list(staging.iterdir()) == []  # staged, then dropped
        exact = sdk.upload_url(id="sized", path="f.bin", content_length=100)
        assert put(exact, b"y" * 100).status_code == 200
        assert sdk.execute("print(len(open('f.bin').read()))", thread_id="sized").stdout == "100\n"
    finally:
        stop_server(server)


def test_listings_are_capped_as_on_local_disk(s3_emulator: Emulator, tmp_path: Any) -> None:
    """The first entries in path order, directories included, and no more."""
    backend = places.cloud(s3_emulator.fresh_url(), s3_emulator.options, tmp_path, None, tmp_path)
    fs = s3_emulator.fs()
    for name in ("a/1.txt", "a/2.txt", "b.txt", "c.txt"):
        fs.pipe_file(f"{backend.base}/t/{name}", b"x")
    listed = anyio.run(backend.entries, ("t",), ())
    assert [e.path for e in listed] == ["a", "a/1.txt", "a/2.txt", "b.txt", "c.txt"]
    backend.max_listed = 3
    capped = anyio.run(backend.entries, ("t",), ())
    assert [e.path for e in capped] == ["a", "a/1.txt", "a/2.txt"]


def test_missing_thread_and_file_are_404(cloud: Cloud) -> None:
    api = cloud.server.client()
    body = {"source": "thread", "id": "never-made"}
    assert api.post("/v1/files/list", json=body).status_code == 404
    cloud.server.sdk().execute("print(1)", thread_id="made")
    missing = {"source": "thread", "id": "made", "path": "nope.txt"}
    response = api.post("/v1/files/download_url", json=missing)
    assert response.status_code == 404
    assert api.post("/v1/files/list", json={"source": "thread", "id": "made"}).json() == {
        "files": []
    }


def _tag(info: dict[str, Any]) -> str:
    for field in ("ETag", "etag", "generation", "md5Hash"):
        if info.get(field):
            return str(info[field])
    raise AssertionError(f"no tag in {info}")


def test_unreachable_storage_is_a_thread_mount_error(tmp_path: Any) -> None:
    """With the bucket out of reach the code does not run; without a thread it does."""
    options = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},  # discard port: refused
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    server = start_server(
        tmp_path / "home", "--storage", "s3://nowhere/x", "--storage-options", json.dumps(options)
    )
    try:
        api = server.client()
        marker = "open('/home/baponi/ran','w').write('x')\nprint('ran')"
        response = api.post("/v1/sandbox/execute", json={"code": marker, "thread_id": "t"})
        body = response.json()
        assert body["error"] == "thread_mount_error" and body["exit_code"] == -1, body
        assert body["stdout"] == ""
        assert not list((tmp_path / "home" / "cache").rglob("ran"))
        plain = api.post("/v1/sandbox/execute", json={"code": "print(2)"}).json()
        assert plain["stdout"] == "2\n"
        listed = api.post("/v1/files/list", json={"source": "thread", "id": "t"})
        assert listed.status_code == 503
        assert listed.json()["error"] == "service_unavailable"
        assert "127.0.0.1" not in listed.text and "Traceback" not in listed.text
    finally:
        stop_server(server)


def test_managed_volumes_live_in_the_bucket(cloud: Cloud) -> None:
    home = cloud.server.home
    cli(home, "volumes", "create", "shared")
    cli(home, "volumes", "create", "ref", "--read-only")
    key = cli(home, "keys", "create", "--volume", "shared", "--volume", "ref").split()[-1]
    sdk = cloud.server.sdk(key)
    api = cloud.server.client(key)
    result = sdk.execute(
        "open('/data/shared/v.txt','w').write('vol')\n"
        "try:\n    open('/data/ref/x','w')\nexcept OSError as e:\n    print(e.errno)"
    )
    assert result.stdout == "30\n"  # EROFS
    listed = api.post("/v1/files/list", json={"source": "volume", "id": "shared"}).json()
    assert [f["path"] for f in listed["files"]] == ["v.txt"]
    stored = [p for p in cloud.fs().find(cloud.url.partition("://")[2] + "/volumes")]
    assert any(p.endswith("/v.txt") for p in stored)
    refused = api.post(
        "/v1/files/upload_url",
        json={"source": "volume", "id": "ref", "path": "x", "content_length": 1},
    )
    assert refused.status_code == 403


@pytest.fixture
def local_server(tmp_path: Any, s3_emulator: Emulator) -> Iterator[Server]:
    server = start_server(tmp_path / "home", env={**os.environ, **s3_emulator.env})
    yield server
    stop_server(server)


def test_storage_connection_mounts_a_users_bucket(
    local_server: Server, s3_emulator: Emulator
) -> None:
    """The server stores its own files on local disk; the connection reaches the user's
    bucket with credentials that never enter the sandbox."""
    url = s3_emulator.fresh_url()
    fs = s3_emulator.fs()
    prefix = url.partition("://")[2]
    fs.pipe_file(f"{prefix}/reports/q3.csv", b"q,3\n")
    home = local_server.home
    endpoint = s3_emulator.options["client_kwargs"]["endpoint_url"]
    secret = "testing"
    cli(
        home,
        "connections",
        "create",
        "lake",
        "--url",
        url,
        "--option",
        "key=testing",
        "--option",
        f"secret={secret}",
        "--option",
        f"endpoint_url={endpoint}",
    )
    key = cli(home, "keys", "create", "--connection", "lake").split()[-1]
    api = local_server.client(key)
    code = (
        "import os, subprocess\n"
        "print(open('/data/lake/reports/q3.csv').read(), end='')\n"
        "open('/data/lake/reports/q4.csv','w').write('q,4\\n')\n"
        "env = open('/proc/self/environ','rb').read()\n"
        "print('secret seen' if b'testing' in env or b'AWS' in env else 'clean')"
    )
    body = api.post("/v1/sandbox/execute", json={"code": code}).json()
    assert body["stdout"] == "q,3\nclean\n", body
    assert fs.cat_file(f"{prefix}/reports/q4.csv") == b"q,4\n"
    # The Files API does not reach into users' buckets.
    listed = api.post("/v1/files/list", json={"source": "volume", "id": "lake"})
    assert listed.status_code == 404


def test_unreachable_connection_is_a_storage_mount_error(local_server: Server) -> None:
    home = local_server.home
    cli(
        home,
        "connections",
        "create",
        "dead",
        "--url",
        "s3://nowhere/x",
        "--option",
        "key=k",
        "--option",
        "secret=s",
        "--option",
        "endpoint_url=http://127.0.0.1:9",
        "--option",
        "retries=1",
    )
    key = cli(home, "keys", "create", "--connection", "dead").split()[-1]
    body = (
        local_server.client(key).post("/v1/sandbox/execute", json={"code": "print('ran')"}).json()
    )
    assert body["error"] == "storage_mount_error" and body["stdout"] == "", body


def test_code_in_the_way_of_a_stored_object_does_not_block_the_thread(cloud: Cloud) -> None:
    """The stored side wins: a link or file where the upload needs a directory is removed
    (never followed), and the next execution runs."""
    sdk = cloud.server.sdk()
    assert sdk.execute("import os\nos.symlink('/etc', 'd')", thread_id="clash").success
    body = b"stored"
    upload = sdk.upload_url(
        id="clash", path="d/x.txt", content_length=len(body), content_type="text/plain"
    )
    assert put(upload, body).status_code in (200, 201)
    result = sdk.execute(
        "import os\nprint(os.path.islink('d'), open('d/x.txt').read())", thread_id="clash"
    )
    assert result.stdout == "False stored\n", result
    assert not os.path.exists("/etc/x.txt")


def test_reserved_names_stay_in_the_workspace(cloud: Cloud) -> None:
    sdk = cloud.server.sdk()
    sdk.execute(
        "open('.baponi-mine','w').write('m')\nopen('ok','w').write('o')", thread_id="reserved"
    )
    result = sdk.execute("import os\nprint(sorted(os.listdir('.')))", thread_id="reserved")
    assert result.stdout == "['.baponi-mine', 'ok']\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3 * sync.SMALL_BYTES // 2), max_size=120))
def test_transfer_groups_cover_every_file_once_within_bounds(sizes: list[int]) -> None:
    rels = [f"f{i}" for i in range(len(sizes))]
    by_rel = dict(zip(rels, sizes, strict=True))
    groups, large = sync._by_size(rels, by_rel)
    assert large == [rel for rel in rels if by_rel[rel] > sync.SMALL_BYTES]
    assert [rel for group in groups for rel in group] == [rel for rel in rels if rel not in large]
    for group in groups:
        assert 1 <= len(group) <= sync.BATCH_FILES
        assert sum(by_rel[rel] for rel in group) <= sync.BATCH_BYTES
