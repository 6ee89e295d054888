"""Volumes end to end: a real `baponi serve`, volumes made with the operator CLI, keys bound
to them, executions through the official SDK (with sub_paths) and the Files API with
source "volume" (the SDK's list/upload/download calls, raw HTTP for DELETE and refusals).

One server and a few keys serve the whole module; each test works in a directory of its own
(a fresh uuid) inside the shared volumes, so that tests stay independent.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from baponi import APIValidationError, ForbiddenError

from baponi_core._errors import NotFound
from baponi_core._sandbox.rootfs import STORAGE_UID
from baponi_core._storage.local import LocalTree
from tests.harness import (
    ERRNO_PROBE,
    Server,
    assert_error,
    cli,
    files_call,
    org_id_of,
    start_server,
    stop_server,
    unique,
)

OTHER_ORG = "volumes-api-other"
REF_FILES = {"readme.txt": "reference data", "q1/data.csv": "1,2,3"}


@dataclass
class Env:
    server: Server
    a: Any  # SDK, key bound to "work" (read-write) and "ref" (read-only)
    b: Any  # SDK, another key bound to "work" only
    bare: Any  # SDK, a key of the same organisation bound to no volume
    other: Any  # SDK, a key of another organisation bound to its own "work"
    http_a: httpx.Client
    http_b: httpx.Client
    http_other: httpx.Client


def volume_id(created: str) -> str:
    """The id in the CLI's "created volume SLUG (vol_...)" line."""
    found = re.search(r"\((vol_[^)\s]+)", created)
    assert found, created
    return found.group(1)


def seed(home: Path, org: str, vol: str, files: dict[str, str]) -> None:
    """Place files into a volume on disk, as an operator fills a read-only volume (nothing
    else can: the API and sandboxes refuse to write to it). Same layout and modes as the
    server's own workspaces: parents traversable, the root private to the sandbox uid."""
    parent = home / "volumes" / org
    parent.mkdir(parents=True, exist_ok=True)
    for directory in (home / "volumes", parent):
        directory.chmod(0o711)
    root = parent / vol
    root.mkdir(mode=0o700)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for item in [root, *root.rglob("*")]:
        os.chown(item, STORAGE_UID, STORAGE_UID, follow_symlinks=False)


def new_key(home: Path, *args: str) -> str:
    """`baponi keys create` prints the key as its last token."""
    return cli(home, "keys", "create", *args).split()[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = start_server(tmp_path_factory.mktemp("volumes-api") / "home")
    home = server.home
    try:
        cli(home, "volumes", "create", "work")
        ref = volume_id(cli(home, "volumes", "create", "ref", "--read-only"))
        seed(home, org_id_of(home), ref, REF_FILES)
        cli(home, "connections", "create", "lake", "--url", "s3://bucket/prefix")
        cli(home, "orgs", "create", OTHER_ORG)
        cli(home, "volumes", "create", "work", "--org", OTHER_ORG)
        cli(home, "volumes", "create", "theirs", "--org", OTHER_ORG)
        keys = {
            "a": new_key(home, "--volume", "work", "--volume", "ref"),
            "b": new_key(home, "--volume", "work"),
            "bare": new_key(home),
            "other": new_key(home, "--org", OTHER_ORG, "--volume", "work", "--volume", "theirs"),
        }
        sdks = {name: server.sdk(key) for name, key in keys.items()}
        https = {name: server.client(keys[name]) for name in ("a", "b", "other")}
        yield Env(
            server,
            sdks["a"],
            sdks["b"],
            sdks["bare"],
            sdks["other"],
            https["a"],
            https["b"],
            https["other"],
        )
        for client in [*sdks.values(), *https.values()]:
            client.close()
    finally:
        stop_server(server)


# -- helpers ----------------------------------------------------------------------------------


def run(sdk: Any, code: str, sub_paths: list[str] | None = None) -> Any:
    return sdk.execute(textwrap.dedent(code), sub_paths=sub_paths, timeout=30)


def report(sdk: Any, code: str, sub_paths: list[str] | None = None) -> Any:
    """Run code that prints one JSON document; it must succeed. The document."""
    result = run(sdk, code, sub_paths)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.error)
    return json.loads(result.stdout)


def tree(sdk: Any, top: str, sub_paths: list[str] | None = None) -> list[str]:
    """Every path below ``top`` as the sandbox sees it (links not followed)."""
    code = f"""
    import json, os
    found = []
    for where, dirs, files in os.walk({top!r}):
        found += [os.path.join(where, n) for n in dirs + files]
    print(json.dumps(sorted(found)))
    """
    return list(report(sdk, code, sub_paths))


def write(sdk: Any, files: dict[str, str]) -> None:
    """Sandboxed code writes ``files`` (absolute sandbox paths)."""
    report(
        sdk,
        f"""
        import json, os
        for path, text in {files!r}.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        print(json.dumps("written"))
        """,
    )


def listed(sdk: Any, slug: str, path: str | None = None) -> dict[str, int]:
    """The Files API listing of a volume, path -> size."""
    return {entry.path: entry.size for entry in sdk.list_files(source="volume", id=slug, path=path)}


def download(sdk: Any, slug: str, path: str) -> bytes:
    signed = sdk.download_url(source="volume", id=slug, path=path)
    response = httpx.get(signed.url, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def upload(sdk: Any, slug: str, path: str, data: bytes) -> httpx.Response:
    signed = sdk.upload_url(source="volume", id=slug, path=path, content_length=len(data))
    headers = {h.name: h.value for h in signed.headers}
    return httpx.put(signed.url, content=data, headers=headers, timeout=30)


def assert_mount_error(result: Any) -> None:
    assert result.error == "volume_mount_error", (result.stdout, result.stderr, result.error)
    assert result.exit_code == -1
    assert result.success is False
    assert result.stdout == ""


# -- mounts ------------------------------------------------------------------------------------


def test_bound_volumes_appear_under_data(env: Env) -> None:
    seen = report(
        env.a,
        ERRNO_PROBE
        + 'print(json.dumps([sorted(os.listdir("/data")), '
        + 'attempt(lambda: os.mkdir("/data/extra"))]))',
    )
    assert seen == [["ref", "work"], "EROFS"]  # /data itself is not writable
    assert report(env.b, 'import json, os; print(json.dumps(os.listdir("/data")))') == ["work"]


def test_key_without_volumes_has_an_empty_data(env: Env) -> None:
    seen = report(
        env.bare,
        'import json, os; print(json.dumps([os.path.isdir("/data"), os.listdir("/data")]))',
    )
    assert seen == [True, []]


def test_files_persist_across_executions(env: Env) -> None:
    where = f"/data/work/{unique()}"
    write(env.a, {f"{where}/deep/state.txt": "round 1"})
    again = report(env.a, f"import json; print(json.dumps(open('{where}/deep/state.txt').read()))")
    assert again == "round 1"


def test_another_key_bound_to_the_volume_sees_and_changes_the_files(env: Env) -> None:
    where = f"/data/work/{unique()}"
    write(env.a, {f"{where}/from-a.txt": "written by a"})
    seen = report(
        env.b,
        f"""
        import json
        text = open("{where}/from-a.txt").read()
        open("{where}/from-b.txt", "w").write("written by b")
        print(json.dumps(text))
        """,
    )
    assert seen == "written by a"
    assert report(env.a, f"import json; print(json.dumps(open('{where}/from-b.txt').read()))") == (
        "written by b"
    )


def test_read_only_volume_is_readable_and_refuses_writes(env: Env) -> None:
    seen = report(
        env.a,
        ERRNO_PROBE
        + """
d = "/data/ref"
print(json.dumps({
    "read": open(f"{d}/q1/data.csv").read(),
    "create": attempt(lambda: open(f"{d}/new.txt", "w")),
    "append": attempt(lambda: open(f"{d}/readme.txt", "a")),
    "unlink": attempt(lambda: os.unlink(f"{d}/readme.txt")),
    "mkdir": attempt(lambda: os.mkdir(f"{d}/newdir")),
    "rename": attempt(lambda: os.rename(f"{d}/q1", f"{d}/q2")),
}))
""",
    )
    assert seen.pop("read") == "1,2,3"
    assert seen == dict.fromkeys(seen, "EROFS"), seen
    assert listed(env.a, "ref") == {"q1": 0, "q1/data.csv": 5, "readme.txt": 14}  # nothing changed


def test_same_slug_in_another_organisation_is_another_volume(env: Env) -> None:
    name = unique()
    write(env.other, {f"/data/work/{name}/theirs.txt": "other org"})
    write(env.a, {f"/data/work/{name}/ours.txt": "default org"})
    assert tree(env.other, f"/data/work/{name}") == [f"/data/work/{name}/theirs.txt"]
    assert listed(env.a, "work", name) == {f"{name}/ours.txt": 11}
    assert listed(env.other, "work", name) == {f"{name}/theirs.txt": 9}


# -- sub_paths ---------------------------------------------------------------------------------


def test_sub_path_mounts_only_that_directory(env: Env) -> None:
    name = unique()
    top = f"/data/work/{name}"
    write(env.a, {f"{top}/a/b/in.txt": "b", f"{top}/a/c/out.txt": "c", f"{top}/top.txt": "t"})
    seen = tree(env.a, "/data", sub_paths=[f"{top}/a/b"])
    assert seen == [
        "/data/work",
        f"/data/work/{name}",
        f"{top}/a",
        f"{top}/a/b",
        f"{top}/a/b/in.txt",
    ]
    # ref, bound to the key but not named, is not mounted at all


def test_two_sub_paths_of_two_volumes(env: Env) -> None:
    name = unique()
    write(env.a, {f"/data/work/{name}/x/keep.txt": "x", f"/data/work/{name}/y/hide.txt": "y"})
    seen = report(
        env.a,
        ERRNO_PROBE
        + f"""
print(json.dumps({{
    "data": sorted(os.listdir("/data")),
    "ref": sorted(os.listdir("/data/ref")),
    "csv": open("/data/ref/q1/data.csv").read(),
    "ref_write": attempt(lambda: open("/data/ref/q1/new.csv", "w")),
    "work": os.listdir("/data/work/{name}"),
    "work_write": attempt(lambda: open("/data/work/{name}/x/new.txt", "w").close()),
}}))
""",
        sub_paths=["/data/ref/q1", f"/data/work/{name}/x"],
    )
    assert seen == {
        "data": ["ref", "work"],
        "ref": ["q1"],  # readme.txt is outside the sub-path
        "csv": "1,2,3",
        "ref_write": "EROFS",  # a sub-path of a read-only volume stays read-only
        "work": ["x"],
        "work_write": "ok",
    }
    assert listed(env.a, "work", f"{name}/x") == {f"{name}/x/keep.txt": 1, f"{name}/x/new.txt": 0}


def test_bare_volume_sub_path_is_the_whole_volume(env: Env) -> None:
    name = unique()
    write(env.a, {f"/data/work/{name}/whole.txt": "w"})
    seen = report(
        env.a,
        f"""
        import json, os
        print(json.dumps([sorted(os.listdir("/data")), os.listdir("/data/work/{name}")]))
        """,
        sub_paths=["/data/work"],
    )
    assert seen == [["work"], ["whole.txt"]]


def test_missing_sub_path_of_a_writable_volume_is_created(env: Env) -> None:
    name = unique()
    target = f"/data/work/{name}/new/deeper"
    seen = report(
        env.a,
        f"""
        import json, os
        open("{target}/made.txt", "w").write("made")
        print(json.dumps(os.listdir("{target}")))
        """,
        sub_paths=[target],
    )
    assert seen == ["made.txt"]
    assert listed(env.a, "work", name) == {
        f"{name}/new": 0,
        f"{name}/new/deeper": 0,
        f"{name}/new/deeper/made.txt": 4,
    }
    assert tree(env.a, f"/data/work/{name}") == [
        f"/data/work/{name}/new",
        f"/data/work/{name}/new/deeper",
        f"/data/work/{name}/new/deeper/made.txt",
    ]


def test_missing_sub_path_of_a_read_only_volume_fails_before_the_code_runs(env: Env) -> None:
    name = unique()
    marker = f"/data/work/{name}/ran.txt"
    result = run(
        env.a,
        f"open({marker!r}, 'w').write('ran'); print('ran')",
        sub_paths=["/data/ref/missing", f"/data/work/{name}"],
    )
    assert_mount_error(result)
    assert listed(env.a, "work", name) == {}
    assert listed(env.a, "ref") == {"q1": 0, "q1/data.csv": 5, "readme.txt": 14}  # nothing created


@pytest.mark.parametrize(
    "through",
    ["rel-link", "rel-link/inner", "etc-link", "abs-link", "host-link"],
)
def test_sub_path_through_a_planted_symlink_fails_before_the_code_runs(
    env: Env, through: str
) -> None:
    name = unique()
    top = f"/data/work/{name}"
    host_dir = env.server.home.parent  # the host directory above the server home
    report(
        env.a,
        f"""
        import json, os
        os.makedirs("{top}/real/inner")
        os.makedirs("{top}/markers")
        os.symlink("real", "{top}/rel-link")
        os.symlink("/etc", "{top}/etc-link")
        os.symlink("{top}/real", "{top}/abs-link")
        os.symlink({str(host_dir)!r}, "{top}/host-link")
        print(json.dumps("planted"))
        """,
    )
    result = run(
        env.a,
        f"open('{top}/markers/ran.txt', 'w').write('ran'); print('ran')",
        sub_paths=[f"{top}/{through}", f"{top}/markers"],
    )
    assert_mount_error(result)
    assert tree(env.a, f"{top}/markers") == []  # the code never ran
    assert tree(env.a, f"{top}/real") == [f"{top}/real/inner"]  # nothing made behind the link


def test_mount_error_is_recorded_on_the_execution(env: Env) -> None:
    top = f"/data/work/{unique()}"
    report(env.a, f"import json, os; os.makedirs('{top}'); os.symlink('/tmp', '{top}/l'); print(1)")
    response = env.http_a.post(
        "/v1/sandbox/execute",
        json={"code": "print('ran')", "language": "python", "sub_paths": [f"{top}/l"]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["error"], body["exit_code"], body["stdout"]) == ("volume_mount_error", -1, "")
    record = env.http_a.get(f"/v1/executions/{body['trace_id']}").json()
    assert (record["status"], record["error"], record["exit_code"], record["stdout"]) == (
        "failed",
        "volume_mount_error",
        -1,
        "",
    )


@pytest.mark.parametrize(
    "sub_path",
    ["/data/ref", "/data/ref/q1", "/data/theirs/x", "/data/lake", "/data/no-such-volume/x"],
)
def test_sub_path_of_a_volume_the_key_is_not_bound_to_is_refused(env: Env, sub_path: str) -> None:
    name = unique()
    marker = f"/data/work/{name}/ran.txt"
    code = f"open({marker!r}, 'w').write('ran')"
    response = env.http_b.post(
        "/v1/sandbox/execute",
        json={"code": code, "language": "python", "sub_paths": [sub_path, f"/data/work/{name}"]},
        timeout=30,
    )
    assert_error(response, 400, "validation_error")
    with pytest.raises(APIValidationError):  # the SDK sees the same refusal
        env.b.execute(code, sub_paths=[sub_path], timeout=30)
    assert listed(env.a, "work", name) == {}


# -- Files API ---------------------------------------------------------------------------------


def test_uploaded_file_is_visible_to_code(env: Env) -> None:
    name = unique()
    data = b"uploaded \x00\xff bytes"
    response = upload(env.a, "work", f"{name}/in/blob.bin", data)
    assert response.status_code == 200, response.text
    code = f"import sys; sys.stdout.write(open('/data/work/{name}/in/blob.bin', 'rb').read().hex())"
    for sdk in (env.a, env.b):  # every key bound to the volume
        result = run(sdk, code)
        assert result.exit_code == 0, result.stderr
        assert bytes.fromhex(result.stdout) == data


def test_file_written_by_code_is_listed_and_downloadable(env: Env) -> None:
    name = unique()
    write(env.a, {f"/data/work/{name}/out/result.txt": "forty-two", f"/data/work/{name}/b": "x"})
    assert listed(env.a, "work", name) == {
        f"{name}/out": 0,
        f"{name}/out/result.txt": 9,
        f"{name}/b": 1,
    }
    assert listed(env.a, "work", f"{name}/out/result.txt") == {f"{name}/out/result.txt": 9}
    assert download(env.a, "work", f"{name}/out/result.txt") == b"forty-two"
    entries = files_call(env.http_a, "list", source="volume", id="work", path=name).json()
    kinds = {e["path"]: e["is_directory"] for e in entries["files"]}
    assert kinds == {f"{name}/out": True, f"{name}/out/result.txt": False, f"{name}/b": False}
    assert f"{name}/out/result.txt" in listed(env.a, "work")  # the whole volume lists it too


def test_delete_removes_the_file_for_code_and_listing(env: Env) -> None:
    name = unique()
    write(env.a, {f"/data/work/{name}/gone.txt": "bye", f"/data/work/{name}/stay.txt": "hi"})
    response = files_call(env.http_a, "delete", source="volume", id="work", path=f"{name}/gone.txt")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": True}
    assert listed(env.a, "work", name) == {f"{name}/stay.txt": 2}
    assert tree(env.b, f"/data/work/{name}") == [f"/data/work/{name}/stay.txt"]


def test_read_only_volume_lists_and_downloads(env: Env) -> None:
    assert listed(env.a, "ref") == {"q1": 0, "q1/data.csv": 5, "readme.txt": 14}
    assert download(env.a, "ref", "readme.txt") == b"reference data"
    # any key of the organisation reaches its volumes through the Files API
    assert download(env.b, "ref", "q1/data.csv") == b"1,2,3"


@pytest.mark.parametrize("action", ["upload_url", "delete"])
def test_read_only_volume_refuses_upload_and_delete(env: Env, action: str) -> None:
    path = "readme.txt" if action == "delete" else "new.txt"
    response = files_call(
        env.http_a, action, source="volume", id="ref", path=path, content_length=3
    )
    assert response.status_code == 403, response.text
    assert response.json() == {"error": "forbidden", "message": "volume ref is read-only"}
    assert listed(env.a, "ref") == {"q1": 0, "q1/data.csv": 5, "readme.txt": 14}


def test_sdk_upload_to_read_only_volume_raises_forbidden(env: Env) -> None:
    with pytest.raises(ForbiddenError, match="volume ref is read-only"):
        env.a.upload_url(source="volume", id="ref", path="x.txt", content_length=1)


@pytest.mark.parametrize("action", ["list", "upload_url", "download_url", "delete"])
@pytest.mark.parametrize("slug", ["theirs", "no-such-volume", "lake"])
def test_unknown_foreign_or_connection_volume_is_not_found(
    env: Env, action: str, slug: str
) -> None:
    body = {"source": "volume", "id": slug, "path": "x.txt", "content_length": 1}
    response = files_call(env.http_a, action, **body)
    assert response.status_code == 404, response.text
    assert response.json() == {"error": "not_found", "message": f"volume {slug} not found"}


def test_other_organisation_reaches_its_own_volume(env: Env) -> None:
    name = unique()
    assert upload(env.other, "theirs", f"{name}.txt", b"mine").status_code == 200
    assert download(env.other, "theirs", f"{name}.txt") == b"mine"
    # the same slug asked for by the default organisation's key is unknown to it
    response = files_call(env.http_a, "download_url", source="volume", id="theirs", path=name)
    assert response.status_code == 404


@pytest.mark.slow
def test_deleted_and_recreated_volume_starts_empty(env: Env) -> None:
    home = env.server.home
    slug = unique("phoenix")
    cli(home, "volumes", "create", slug)
    old = env.server.sdk(new_key(home, "--volume", slug))
    try:
        write(old, {f"/data/{slug}/keep.txt": "old life"})
        assert listed(old, slug) == {"keep.txt": 8}
        assert cli(home, "volumes", "delete", slug).splitlines()[0] == f"deleted volume {slug}"
        response = files_call(env.http_a, "list", source="volume", id=slug)
        assert response.status_code == 404
        assert tree(old, "/data") == []  # unbound from the key
        cli(home, "volumes", "create", slug)
        assert tree(old, "/data") == []  # a new volume is not bound to the old key
        fresh = env.server.sdk(new_key(home, "--volume", slug))
        try:
            assert tree(fresh, "/data") == [f"/data/{slug}"]  # mounted, and empty
        finally:
            fresh.close()
        assert listed(old, slug) == {}  # the Files API reaches it (same organisation)
        response = files_call(env.http_a, "download_url", source="volume", id=slug, path="keep.txt")
        assert response.status_code == 404
    finally:
        old.close()


def test_signed_urls_of_a_deleted_volume_stop_working(env: Env) -> None:
    """At once, not when they expire: neither download nor upload, before the sweep has
    removed the files or after, nor after a new volume took the slug; and no upload makes
    the deleted volume's directories again."""
    home, slug = env.server.home, unique("doomed")
    vol = volume_id(cli(home, "volumes", "create", slug))
    root = home / "volumes" / org_id_of(home) / vol

    def signed(action: str, path: str) -> dict[str, Any]:
        body = {"source": "volume", "id": slug, "path": path, "content_length": 4}
        answer = files_call(env.http_a, action, **body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    assert upload(env.a, slug, "kept.txt", b"kept").status_code == 200
    download_url = signed("download_url", "kept.txt")["url"]
    put = signed("upload_url", "new/dir/file.txt")
    assert httpx.get(download_url, timeout=10).content == b"kept"  # valid until the delete
    cli(home, "volumes", "delete", slug)

    def refused() -> None:
        assert_error(httpx.get(download_url, timeout=10), 404)
        headers = {h["name"]: h["value"] for h in put["headers"]}
        assert_error(httpx.put(put["url"], content=b"late", headers=headers, timeout=10), 404)

    refused()
    seen = env.server.seen(root)  # as root, its filesystem: mounted in the server's namespace
    assert (seen / "kept.txt").exists() and not (seen / "new").exists()  # not swept yet
    (seen / "kept.txt").unlink()  # as the sweep removes its files
    refused()
    cli(home, "volumes", "create", slug)  # the slug again: another volume, another id
    refused()
    assert list(seen.iterdir()) == []  # no upload made the deleted volume's directories again


def test_upload_never_makes_a_missing_root(tmp_path: Path) -> None:
    """Below the store's check, the tree itself: an upload makes the directories between
    its root and its file, never the root (a volume swept meanwhile)."""
    tree = LocalTree(tmp_path, owner=None)
    (tmp_path / "volumes" / "org").mkdir(parents=True)
    with pytest.raises(NotFound):
        tree.begin_upload(("volumes", "org", "vol_gone"), ("a", "b.txt"))
    assert list((tmp_path / "volumes" / "org").iterdir()) == []
    (tmp_path / "volumes" / "org" / "vol_here").mkdir()
    tree.begin_upload(("volumes", "org", "vol_here"), ("a", "b.txt")).close()
    assert (tmp_path / "volumes" / "org" / "vol_here" / "a").is_dir()


def test_new_volume_lists_empty_before_first_use(env: Env) -> None:
    slug = unique("fresh")
    cli(env.server.home, "volumes", "create", slug)
    response = files_call(env.http_a, "list", source="volume", id=slug)
    assert response.status_code == 200, response.text
    assert response.json() == {"files": []}


def test_planted_symlinks_are_never_served(env: Env) -> None:
    name = unique()
    top = f"/data/work/{name}"
    db = env.server.home / "baponi.db"
    report(
        env.a,
        f"""
        import json, os
        os.makedirs("{top}")
        open("{top}/plain.txt", "w").write("plain")
        os.symlink("/etc/passwd", "{top}/passwd")
        os.symlink({str(db)!r}, "{top}/db-abs")
        os.symlink("../../../../baponi.db", "{top}/db-rel")  # from the host's workspace
        os.symlink("/etc", "{top}/etc-dir")
        print(json.dumps("planted"))
        """,
    )
    assert listed(env.a, "work", name) == {f"{name}/plain.txt": 5}
    for link in ("passwd", "db-abs", "db-rel", "etc-dir/passwd"):
        response = files_call(
            env.http_a, "download_url", source="volume", id="work", path=f"{name}/{link}"
        )
        assert response.status_code == 404, (link, response.text)
    inside = files_call(env.http_a, "list", source="volume", id="work", path=f"{name}/etc-dir")
    assert inside.status_code in (200, 404)
    assert "passwd" not in inside.text


def test_upload_and_delete_never_go_through_a_planted_symlink(
    env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = unique()
    top = f"/data/work/{name}"
    outside = tmp_path_factory.mktemp("outside")
    victim = outside / "victim.txt"
    victim.write_text("untouched")
    report(
        env.a,
        f"""
        import json, os
        os.makedirs("{top}")
        os.symlink({str(outside)!r}, "{top}/dir-link")
        os.symlink({str(victim)!r}, "{top}/file-link")
        print(json.dumps("planted"))
        """,
    )
    for path in (f"{name}/dir-link/new.txt", f"{name}/file-link", f"{name}/dir-link/victim.txt"):
        signed = files_call(
            env.http_a, "upload_url", source="volume", id="work", path=path, content_length=5
        )
        if signed.status_code == 200:  # refusing at the PUT is as good as refusing here
            body = signed.json()
            headers = {h["name"]: h["value"] for h in body["headers"]}
            httpx.put(body["url"], content=b"owned", headers=headers, timeout=30)
        files_call(env.http_a, "delete", source="volume", id="work", path=path)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "untouched"
