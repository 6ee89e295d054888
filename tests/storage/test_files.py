"""The Files API on the local backend: list, signed upload and download URLs, delete.

Everything goes through the real server: the official SDK where it has a method, raw HTTP for
DELETE, signed URLs and refusals. Thread homes are written by sandboxed code, so the traps
(symlinks, FIFOs, sockets, hard links) are made by code executed in the thread itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from baponi import APIValidationError, BaponiError

from baponi_core._sandbox.rootfs import STORAGE_UID
from baponi_core._storage.local import MAX_DEPTH
from baponi_core._storage.signing import Grant, UrlSigner
from tests.harness import (
    Server,
    assert_error,
    cli,
    files_call,
    org_id_of,
    org_key,
    start_server,
    stop_server,
    unique,
    wait_until,
)

SIGNED_PREFIX = "/v1/files/signed/"
TTL_S = 15 * 60
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
OTHER_ORG = "files-second-org"  # not ending in "other": test_sdk looks for "other "
TEN_GIB = 10 * 1024**3


# -- helpers ----------------------------------------------------------------------------------


def new_thread() -> str:
    return unique("files")


def execute(sdk: Any, thread: str, code: str) -> str:
    """Run Python ``code`` in ``thread``; it must succeed. Its stdout."""
    result = sdk.execute(textwrap.dedent(code), thread_id=thread, timeout=30)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.error)
    return str(result.stdout)


def depth(path: Path) -> int:
    """How many directories deep the chain of ``d`` directories below ``path`` goes."""
    levels, fd = 0, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        while True:
            try:
                below = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                return levels + 1
            os.close(fd)
            fd, levels = below, levels + 1
    finally:
        os.close(fd)


def put(signed: Any, content: Any, **headers: str) -> httpx.Response:
    """PUT to a signed URL with the headers it came with (a list of name/value pairs)."""
    sent = {h.name: h.value for h in signed.headers} | headers
    return httpx.put(signed.url, content=content, headers=sent, timeout=30)


def upload(sdk: Any, thread: str, path: str, data: bytes) -> None:
    signed = sdk.upload_url(path=path, content_length=len(data), id=thread)
    response = put(signed, data)
    assert response.status_code == 200, response.text


def download(sdk: Any, thread: str, path: str) -> bytes:
    signed = sdk.download_url(path=path, id=thread)
    response = httpx.get(signed.url, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def listing(api: httpx.Client, thread: str, path: str | None = None) -> dict[str, dict[str, Any]]:
    """The raw list answer by path."""
    body: dict[str, Any] = {"source": "thread", "id": thread}
    if path is not None:
        body["path"] = path
    response = files_call(api, "list", **body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"files"}
    entries = response.json()["files"]
    assert all(set(e) == {"name", "path", "size", "modified", "is_directory"} for e in entries)
    return {entry["path"]: entry for entry in entries}


def on_disk(directory: Path) -> set[str]:
    """Every name below ``directory`` (links included, never followed), relative."""
    found = set()
    for where, dirs, files in os.walk(directory):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(where, name), directory))
    return found


def server_fds_below(server: Server, directory: Path) -> dict[str, int]:
    """Files below ``directory`` the server process holds open, with their sizes."""
    held = {}
    root = f"/proc/{server.process.pid}/root"
    if str(directory).startswith(root):  # the server names it without the prefix
        directory = Path(str(directory).removeprefix(root))
    fds = Path(f"/proc/{server.process.pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
            size = os.stat(fd).st_size
        except OSError:
            continue  # closed while we looked
        if target.startswith(f"{directory}/"):
            held[target] = size
    return held


@pytest.fixture(scope="module")
def org_id(server: Server) -> str:
    """The id of the default organisation, which the session key belongs to."""
    return org_id_of(server.home)


@pytest.fixture()
def thread(sdk: Any) -> str:
    """A fresh thread whose home exists (code has run in it)."""
    thread_id = new_thread()
    execute(sdk, thread_id, "pass")
    return thread_id


@pytest.fixture()
def home(server: Server, org_id: str, thread: str) -> Path:
    """The host directory of ``thread``."""
    return server.threads / org_id / thread


# -- the seed's complete workflow ---------------------------------------------------------------


def test_complete_workflow(server: Server, sdk: Any, api: httpx.Client, org_id: str) -> None:
    thread = new_thread()
    input_data = b'{"values": [1, 2, 3, 4, 5]}'
    signed = sdk.upload_url(
        path="input.json",
        content_length=len(input_data),
        id=thread,
        content_type="application/json",
    )
    assert signed.method == "PUT"
    assert signed.url.startswith(f"{server.url}{SIGNED_PREFIX}")
    assert [(h.name, h.value) for h in signed.headers] == [("Content-Type", "application/json")]
    expires = datetime.fromisoformat(signed.expires_at.replace("Z", "+00:00"))
    assert TTL_S - 60 < (expires - datetime.now(UTC)).total_seconds() <= TTL_S + 1
    assert put(signed, input_data).status_code == 200

    stdout = execute(
        sdk,
        thread,
        """
        import json, os
        with open('/home/baponi/input.json') as f:
            data = json.load(f)
        result = {"sum": sum(data["values"]), "count": len(data["values"])}
        os.makedirs('/home/baponi/results')
        with open('/home/baponi/results/output.json', 'w') as f:
            json.dump(result, f)
        print(f"Processed {result['count']} values, sum = {result['sum']}")
        """,
    )
    assert stdout == "Processed 5 values, sum = 15\n"

    output = b'{"sum": 15, "count": 5}'  # json.dump's bytes (the seed's "25 bytes" is prose)
    entries = {e.path: e.size for e in sdk.list_files(id=thread)}
    assert entries == {"input.json": len(input_data), "results": 0, "results/output.json": 23}
    raw = listing(api, thread)
    assert {p: (e["name"], e["is_directory"]) for p, e in raw.items()} == {
        "input.json": ("input.json", False),
        "results": ("results", True),
        "results/output.json": ("output.json", False),
    }
    assert all(ISO_UTC.match(e["modified"]) for e in raw.values()), raw
    assert {e.path for e in sdk.list_files(id=thread, path="results/")} == {"results/output.json"}

    got = sdk.download_url(path="results/output.json", id=thread)
    assert (got.method, got.headers) == ("GET", [])
    response = httpx.get(got.url, timeout=30)
    assert response.status_code == 200
    assert response.content == output
    assert response.headers["content-length"] == str(len(output))
    assert json.loads(response.content) == {"sum": 15, "count": 5}

    uploaded = (server.threads / org_id / thread / "input.json").stat()
    assert (uploaded.st_uid, stat.S_IMODE(uploaded.st_mode)) == (STORAGE_UID, 0o600)

    deleted = files_call(api, "delete", source="thread", id=thread, path="results/output.json")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True}
    assert {e.path for e in sdk.list_files(id=thread)} == {"input.json", "results"}
    assert_error(files_call(api, "download_url", id=thread, path="results/output.json"), 404)
    assert_error(files_call(api, "delete", id=thread, path="results/output.json"), 404)


def test_upload_makes_directories_the_thread_can_use(server: Server, sdk: Any, org_id: str) -> None:
    """Parents made for an upload belong to the sandbox uid: code can write in them."""
    thread = new_thread()
    upload(sdk, thread, "./deep//er/./x.txt", b"from the client")
    home = server.threads / org_id / thread
    for made in (home, home / "deep", home / "deep/er", home / "deep/er/x.txt"):
        assert made.lstat().st_uid == STORAGE_UID, made
    stdout = execute(
        sdk,
        thread,
        """
        open('/home/baponi/deep/er/y.txt', 'w').write('from code')
        print(open('/home/baponi/deep/er/x.txt').read())
        """,
    )
    assert stdout == "from the client\n"
    assert download(sdk, thread, "deep/er/y.txt") == b"from code"
    assert {e.path for e in sdk.list_files(id=thread, path="deep//er/")} == {
        "deep/er/x.txt",
        "deep/er/y.txt",
    }


def test_upload_replaces_and_round_trips_bytes(sdk: Any, thread: str, home: Path) -> None:
    big = os.urandom(3 * (1 << 20) + 7)  # several server read/write chunks
    upload(sdk, thread, "data/blob.bin", big)
    fetched = download(sdk, thread, "data/blob.bin")
    assert hashlib.sha256(fetched).digest() == hashlib.sha256(big).digest()

    upload(sdk, thread, "data/blob.bin", b"smaller")
    assert download(sdk, thread, "data/blob.bin") == b"smaller"
    upload(sdk, thread, "empty", b"")
    assert download(sdk, thread, "empty") == b""
    upload(sdk, thread, "données/ü.txt", "ünïcode".encode())
    assert download(sdk, thread, "données/ü.txt") == "ünïcode".encode()
    assert on_disk(home) == {"data", "data/blob.bin", "empty", "données", "données/ü.txt"}


def test_upload_onto_a_directory_is_refused(
    sdk: Any, api: httpx.Client, thread: str, home: Path
) -> None:
    upload(sdk, thread, "dir/inside.txt", b"keep me")
    response = put(sdk.upload_url(path="dir", content_length=3, id=thread), b"new")
    assert_error(response, 409)
    assert download(sdk, thread, "dir/inside.txt") == b"keep me"
    assert on_disk(home) == {"dir", "dir/inside.txt"}
    assert_error(files_call(api, "download_url", id=thread, path="dir"), 400)


def test_missing_thread_and_file(api: httpx.Client, thread: str) -> None:
    missing = new_thread()
    for action in ("list", "download_url", "delete"):
        assert_error(
            files_call(api, action, id=missing, path="x"),
            404,
            message=f"thread {missing} not found",
        )
    assert_error(files_call(api, "download_url", id=thread, path="nope.txt"), 404)
    assert_error(files_call(api, "delete", id=thread, path="nope.txt"), 404)
    assert_error(files_call(api, "delete", id=thread, path="no/such/dir"), 404)
    assert listing(api, thread, "no/such/dir") == {}
    # An upload URL makes the thread; nothing else appears until bytes arrive.
    made = files_call(api, "upload_url", id=missing, path="a/b.txt", content_length=1)
    assert made.status_code == 200, made.text
    assert listing(api, missing) == {}


# -- signed URLs ---------------------------------------------------------------------------------


def token_of(url: str) -> str:
    path = urlsplit(url).path
    assert path.startswith(SIGNED_PREFIX)
    return path[len(SIGNED_PREFIX) :]


def url_with(server: Server, token: str) -> str:
    return f"{server.url}{SIGNED_PREFIX}{token}"


def change_one_char(token: str, part: int) -> str:
    pieces = token.split(".")
    assert len(pieces) == 3, token
    text = pieces[part]
    i = len(text) // 2
    pieces[part] = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
    return ".".join(pieces)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def edit_payload(token: str, **changes: Any) -> str:
    """The token with its payload changed and its old MAC kept."""
    kid, body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return f"{kid}.{b64(json.dumps(payload | changes, separators=(',', ':')).encode())}.{mac}"


@pytest.fixture()
def stored(sdk: Any, thread: str) -> tuple[str, str]:
    """A thread holding ``f.txt`` and ``other.txt``; a download URL of ``f.txt``."""
    upload(sdk, thread, "f.txt", b"original")
    upload(sdk, thread, "other.txt", b"other")
    return thread, sdk.download_url(path="f.txt", id=thread).url


@pytest.mark.parametrize("part", [0, 1, 2], ids=["key-id", "payload", "mac"])
def test_tampered_token_is_refused(
    server: Server, sdk: Any, stored: tuple[str, str], part: int
) -> None:
    thread, get_url = stored
    put_url = sdk.upload_url(path="f.txt", content_length=3, id=thread).url
    for url in (get_url, put_url):
        tampered = url_with(server, change_one_char(token_of(url), part))
        assert_error(httpx.get(tampered, timeout=10), 403, message="signature does not match")
        assert_error(
            httpx.put(tampered, content=b"bad", timeout=10), 403, message="signature does not match"
        )
    assert download(sdk, thread, "f.txt") == b"original"


@pytest.mark.parametrize("mac", ["%C3%A9", "a%E2%80%AEb", "%F0%9F%98%80" * 10])
def test_non_ascii_signature_is_refused(
    server: Server, sdk: Any, stored: tuple[str, str], mac: str
) -> None:
    """A real key id with a MAC that is not ASCII: a 403, not the 500 that comparing
    it in constant time used to raise."""
    thread, get_url = stored
    kid, body, _ = token_of(get_url).split(".")
    forged = url_with(server, f"{kid}.{body}.{mac}")
    assert_error(httpx.get(forged, timeout=10), 403, message="signature does not match")
    assert_error(
        httpx.put(forged, content=b"bad", timeout=10), 403, message="signature does not match"
    )
    assert download(sdk, thread, "f.txt") == b"original"


@pytest.mark.parametrize(
    "changes",
    [
        {"p": "other.txt"},
        {"e": int(time.time()) + 86400},
        {"m": "PUT", "n": 3},
        {"r": ["thread", "org_x", "someone-else"]},
    ],
    ids=["path", "expiry", "method", "root"],
)
def test_edited_payload_is_refused(
    server: Server, sdk: Any, stored: tuple[str, str], changes: dict[str, Any]
) -> None:
    thread, get_url = stored
    forged = url_with(server, edit_payload(token_of(get_url), **changes))
    assert_error(httpx.get(forged, timeout=10), 403, message="signature does not match")
    assert_error(
        httpx.put(forged, content=b"new", timeout=10), 403, message="signature does not match"
    )
    assert download(sdk, thread, "f.txt") == b"original"


def test_expired_url_is_refused(
    server: Server, sdk: Any, org_id: str, stored: tuple[str, str]
) -> None:
    """Tokens made with the server's own key file: valid until their expiry, refused after."""
    thread, _ = stored
    signer = UrlSigner.load(server.home / "signing.keys")
    root = ("threads", org_id, thread)
    now = int(time.time())

    fresh = url_with(server, signer.sign(Grant("GET", root, "f.txt", None, now + 60)))
    assert httpx.get(fresh, timeout=10).content == b"original"  # the key is the server's

    for method, size in (("GET", None), ("PUT", 3)):
        token = signer.sign(Grant(method, root, "f.txt", size, now - 2))
        response = httpx.request(method, url_with(server, token), content=b"new", timeout=10)
        assert_error(response, 403, message="this signed URL has expired")
    assert download(sdk, thread, "f.txt") == b"original"


def test_wrong_method_is_refused(server: Server, sdk: Any, stored: tuple[str, str]) -> None:
    thread, get_url = stored
    put_url = sdk.upload_url(path="f.txt", content_length=3, id=thread).url
    assert_error(httpx.get(put_url, timeout=10), 403, message="this URL is signed for PUT, not GET")
    assert_error(
        httpx.put(get_url, content=b"new", timeout=10),
        403,
        message="this URL is signed for GET, not PUT",
    )
    assert download(sdk, thread, "f.txt") == b"original"
    assert httpx.put(put_url, content=b"new", timeout=10).status_code == 200  # still usable
    assert download(sdk, thread, "f.txt") == b"new"


def test_signed_url_payload_matches_expires_at(sdk: Any, thread: str) -> None:
    signed = sdk.upload_url(path="a/b", content_length=42, id=thread)
    _, body, _ = token_of(signed.url).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert (payload["m"], payload["p"], payload["n"]) == ("PUT", "a/b", 42)
    expires = datetime.fromisoformat(signed.expires_at.replace("Z", "+00:00"))
    assert int(expires.timestamp()) == payload["e"]


# -- exact sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [9, 11])
def test_content_length_must_be_the_signed_size(
    sdk: Any, thread: str, home: Path, size: int
) -> None:
    upload(sdk, thread, "same.txt", b"old content")
    signed = sdk.upload_url(path="same.txt", content_length=10, id=thread)
    fresh = sdk.upload_url(path="fresh.txt", content_length=10, id=thread)
    for url in (signed, fresh):
        response = put(url, b"x" * size)
        assert_error(response, 400, message="Content-Length must be the signed size, 10 bytes")
    assert download(sdk, thread, "same.txt") == b"old content"
    assert {e.path for e in sdk.list_files(id=thread)} == {"same.txt"}
    assert on_disk(home) == {"same.txt"}


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([b"x" * 6, b"y" * 6], "upload exceeds the signed size of 10 bytes"),
        ([b"x" * 6], "upload ended after 6 of 10 bytes"),
        ([b"x" * 4, b"y" * 4], "upload ended after 8 of 10 bytes"),
    ],
    ids=["longer", "shorter", "shorter-2-chunks"],
)
def test_chunked_body_must_be_the_signed_size(
    sdk: Any, thread: str, home: Path, chunks: list[bytes], message: str
) -> None:
    upload(sdk, thread, "same.txt", b"old content")
    for path in ("same.txt", "fresh.txt"):
        signed = sdk.upload_url(path=path, content_length=10, id=thread)
        response = put(signed, iter(chunks))  # a generator: chunked, no Content-Length
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_error(response, 400, message=message)
    assert download(sdk, thread, "same.txt") == b"old content"
    assert {e.path for e in sdk.list_files(id=thread)} == {"same.txt"}
    assert on_disk(home) == {"same.txt"}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_interrupted_upload_leaves_nothing(
    server: Server, sdk: Any, thread: str, home: Path, framing: str
) -> None:
    """Half an upload is written to disk, invisible, then gone once the client hangs up."""
    upload(sdk, thread, "same.txt", b"old content")
    signed = sdk.upload_url(path="same.txt", content_length=1000, id=thread)
    url = urlsplit(signed.url)
    part = b"p" * 400
    if framing == "chunked":
        head, body = "Transfer-Encoding: chunked", b"190\r\n" + part + b"\r\n"
    else:
        head, body = "Content-Length: 1000", part
    request = f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n{head}\r\n\r\n".encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request + body)
        # The server holds the partial file (an unnamed O_TMPFILE in the home) ...
        wait_until(
            lambda: list(server_fds_below(server, home).values()) == [400],
            10,
            "the server to hold the 400 bytes sent",
        )
        assert on_disk(home) == {"same.txt"}
        assert {e.path: e.size for e in sdk.list_files(id=thread)} == {"same.txt": 11}
    # ... and lets it go when the client is gone, naming nothing.
    wait_until(
        lambda: not server_fds_below(server, home),
        10,
        lambda: f"the server to let go of {server_fds_below(server, home)}",
    )
    assert on_disk(home) == {"same.txt"}
    assert download(sdk, thread, "same.txt") == b"old content"
    upload(sdk, thread, "same.txt", b"n" * 1000)  # the same name still takes a whole upload
    assert download(sdk, thread, "same.txt") == b"n" * 1000
    assert on_disk(home) == {"same.txt"}


def test_abandoned_downloads_release_the_file(
    server: Server, sdk: Any, thread: str, home: Path
) -> None:
    upload(sdk, thread, "big.bin", os.urandom(4 << 20))
    url = urlsplit(sdk.download_url(path="big.bin", id=thread).url)
    assert httpx.head(f"{server.url}{url.path}", timeout=10).status_code == 200
    for _ in range(3):
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
            assert sock.recv(12) == b"HTTP/1.1 200"
    wait_until(
        lambda: not server_fds_below(server, home),
        10,
        lambda: f"the server to let go of {server_fds_below(server, home)}",
    )


# -- links, FIFOs, sockets made by sandboxed code ------------------------------------------------

TRAPS = """
import os, socket
os.chdir('/home/baponi')
open('real.txt', 'w').write('real')
open('solo.txt', 'w').write('solo')
os.mkdir('realdir')
open('realdir/inner.txt', 'w').write('inner')
os.symlink('/etc/passwd', 'passwd')
os.symlink({db!r}, 'db')
os.symlink({keys!r}, 'keys')
os.symlink({victim!r}, 'victim')
os.symlink({victim_dir!r}, 'hostdir')
os.symlink('real.txt', 'alias.txt')
os.symlink('realdir', 'dirlink')
os.symlink('/etc', 'etc')
os.mkfifo('pipe')
socket.socket(socket.AF_UNIX).bind('sock')
open('orig.txt', 'w').write('orig')
os.link('orig.txt', 'hard.txt')
os.mkdir('trap')
os.symlink({victim_dir!r}, 'trap/escape')
os.symlink({victim!r}, 'trap/file')
print('ready')
"""
LINKS = {"passwd", "db", "keys", "victim", "hostdir", "alias.txt", "dirlink", "etc"}
SECRET = b"host secret"


@pytest.fixture()
def victims(tmp_path: Path) -> tuple[Path, Path]:
    """A host file and directory no request may read or change."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(SECRET)
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "inner.txt").write_bytes(SECRET)
    return victim, victim_dir


@pytest.fixture()
def trapped(server: Server, sdk: Any, thread: str, victims: tuple[Path, Path]) -> str:
    """``thread`` with links to host files, a FIFO, a socket and a hard link in it."""
    victim, victim_dir = victims
    code = TRAPS.format(
        db=str(server.home / "baponi.db"),
        keys=str(server.home / "signing.keys"),
        victim=str(victim),
        victim_dir=str(victim_dir),
    )
    assert execute(sdk, thread, code) == "ready\n"
    return thread


def victims_intact(victims: tuple[Path, Path]) -> None:
    victim, victim_dir = victims
    assert victim.read_bytes() == SECRET
    assert sorted(os.listdir(victim_dir)) == ["inner.txt"]
    assert (victim_dir / "inner.txt").read_bytes() == SECRET


def test_list_leaves_out_links_fifos_sockets_and_hard_links(
    api: httpx.Client, trapped: str
) -> None:
    listed = set(listing(api, trapped))
    regular = {"real.txt", "solo.txt", "realdir", "realdir/inner.txt", "trap"}
    assert regular <= listed
    # Hard-linked files are left out too: downloads refuse them.
    assert listed == regular, listed
    for path in (*LINKS, "pipe", "sock", "trap/escape", "trap/file"):
        assert listing(api, trapped, path) == {}, path
    assert listing(api, trapped, "trap") == {}
    assert set(listing(api, trapped, "realdir")) == {"realdir/inner.txt"}


def test_download_never_follows_links(api: httpx.Client, trapped: str) -> None:
    paths = [
        *LINKS,
        "dirlink/inner.txt",
        "hostdir/inner.txt",
        "etc/passwd",
        "trap/file",
        "trap/escape/inner.txt",
        "pipe",  # opening a FIFO to read would block: must answer at once
        "pipe/x",
        "sock/x",
        "orig.txt",  # both names of a hard link
        "hard.txt",
    ]
    answers = {}
    for path in paths:
        response = files_call(api, "download_url", id=trapped, path=path)
        answers[path] = (response.status_code, response.json().get("error"))
    assert answers == dict.fromkeys(paths, (404, "not_found"))
    assert_error(files_call(api, "download_url", id=trapped, path="realdir"), 400)


def test_download_of_a_socket_is_not_found(api: httpx.Client, trapped: str) -> None:
    assert_error(files_call(api, "download_url", id=trapped, path="sock"), 404)


def test_signed_download_checks_the_file_when_used(
    sdk: Any, trapped: str, victims: tuple[Path, Path]
) -> None:
    """A URL signed for a plain file serves nothing once code swaps it for a link."""
    victim, victim_dir = victims
    urls = {p: sdk.download_url(path=p, id=trapped).url for p in ("real.txt", "realdir/inner.txt")}
    urls["solo.txt"] = sdk.download_url(path="solo.txt", id=trapped).url
    assert httpx.get(urls["solo.txt"], timeout=10).content == b"solo"
    code = f"""
    import os
    os.chdir('/home/baponi')
    os.remove('real.txt'); os.symlink({str(victim)!r}, 'real.txt')
    os.rename('realdir', 'realdir.old'); os.symlink({str(victim_dir)!r}, 'realdir')
    os.link('solo.txt', 'solo2.txt')
    """
    execute(sdk, trapped, code)
    for path, url in urls.items():
        response = httpx.get(url, timeout=10)
        assert_error(response, 404)
        assert SECRET not in response.content, path


def test_upload_never_writes_through_links(
    sdk: Any, api: httpx.Client, trapped: str, home: Path, victims: tuple[Path, Path]
) -> None:
    # Through a link on the way: refused when the bytes arrive, nothing written anywhere.
    for path in ("dirlink/new.txt", "hostdir/inner.txt", "trap/escape/new.txt", "etc/new"):
        signed = sdk.upload_url(path=path, content_length=3, id=trapped)
        assert_error(put(signed, b"new"), 404)
    assert not (home / "realdir/new.txt").exists()
    assert not Path("/etc/new").exists()
    # Onto a link: the link itself is replaced by the uploaded file; its target is untouched.
    for path in ("victim", "dirlink", "alias.txt"):
        upload(sdk, trapped, path, b"uploaded")
        assert stat.S_ISREG((home / path).lstat().st_mode), path
        assert download(sdk, trapped, path) == b"uploaded"
    assert (home / "real.txt").read_bytes() == b"real"
    assert (home / "realdir/inner.txt").read_bytes() == b"inner"
    victims_intact(victims)
    assert not {p for p in on_disk(home) if p.rpartition("/")[2].startswith(".baponi")}


def test_delete_removes_links_never_their_targets(
    server: Server, api: httpx.Client, trapped: str, home: Path, victims: tuple[Path, Path]
) -> None:
    for path in ("dirlink/inner.txt", "hostdir/inner.txt", "trap/escape/inner.txt", "etc/passwd"):
        assert_error(files_call(api, "delete", id=trapped, path=path), 404)
    for path in (*sorted(LINKS), "trap", "pipe", "sock", "hard.txt"):
        response = files_call(api, "delete", id=trapped, path=path)
        assert response.status_code == 200 and response.json() == {"deleted": True}, path
        assert not os.path.lexists(home / path), path
    assert on_disk(home) == {"real.txt", "solo.txt", "realdir", "realdir/inner.txt", "orig.txt"}
    assert (home / "real.txt").read_bytes() == b"real"
    assert (home / "orig.txt").read_bytes() == b"orig"
    victims_intact(victims)
    assert Path("/etc/passwd").stat().st_size > 0
    assert (server.home / "baponi.db").stat().st_size > 0
    assert UrlSigner.load(server.home / "signing.keys").keys
    # With its other name gone, the former hard link is a plain file again: served.
    response = httpx.get(
        api.post("/v1/files/download_url", json={"id": trapped, "path": "orig.txt"}).json()["url"],
        timeout=10,
    )
    assert response.content == b"orig"


def test_deep_tree_made_by_code_can_be_listed_and_deleted(
    server: Server, sdk: Any, thread: str, home: Path
) -> None:
    """Code may nest directories deeper than Python's recursion limit; the API must still
    answer for that thread (list it, delete it), not fail with a 500."""
    code = """
    import os
    os.chdir('/home/baponi')
    for _ in range(1500):
        os.mkdir('d'); os.chdir('d')
    open('leaf', 'w').write('x')
    """
    try:
        result = sdk.execute(textwrap.dedent(code), thread_id=thread, timeout=30)
        # The quota watcher cannot measure a home deeper than it accounts for, so a sample
        # taken once the tree is that deep stops the run: either way the tree is there.
        assert result.exit_code == 0 or result.error == "disk_quota_exceeded", result
        assert depth(home / "d") >= MAX_DEPTH
        with server.client() as api:  # a 500 closes the connection: one client per call
            listed = files_call(api, "list", id=thread)
        assert listed.status_code == 200, listed.text
        with server.client() as api:
            deleted = files_call(api, "delete", id=thread, path="d")
        assert deleted.status_code == 200, deleted.text
        assert on_disk(home) == set()
    finally:
        # GNU rm copes with any depth; the session's cleanup (shutil.rmtree) might not.
        subprocess.run(["rm", "-rf", "--", str(home / "d")], check=True, timeout=60)


# -- scope -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_key(server: Server) -> str:
    """A key of another organisation on the shared server (which must never write there:
    other test files expect one organisation's thread homes only)."""
    return org_key(server, OTHER_ORG)


@pytest.mark.slow
def test_other_organisation_gets_not_found(
    server: Server, sdk: Any, thread: str, other_key: str
) -> None:
    upload(sdk, thread, "mine.txt", b"mine")
    other_sdk = server.sdk(other_key)
    try:
        with pytest.raises(BaponiError) as listed:
            other_sdk.list_files(id=thread)
        assert listed.value.status_code == 404
        with pytest.raises(BaponiError) as fetched:
            other_sdk.download_url(path="mine.txt", id=thread)
        assert fetched.value.status_code == 404
    finally:
        other_sdk.close()
    with server.client(other_key) as other:
        for action in ("list", "download_url", "delete"):
            response = files_call(other, action, id=thread, path="mine.txt")
            assert_error(response, 404, message=f"thread {thread} not found")
    assert download(sdk, thread, "mine.txt") == b"mine"
    assert not (server.threads / org_id_of(server.home, OTHER_ORG)).exists()  # made nothing


@pytest.mark.slow
def test_same_thread_id_in_two_organisations(tmp_path: Path) -> None:
    """On a server of its own: both organisations may use one thread id, separately."""
    own = start_server(tmp_path / "home")
    try:
        cli(own.home, "orgs", "create", "second")
        keys = [own.key, own.new_key("--org", "second")]
        clients = [own.sdk(k) for k in keys]
        try:
            for i, client in enumerate(clients):
                upload(client, "shared-id", "same.txt", f"org {i}".encode())
                upload(client, "shared-id", f"only{i}.txt", b"x")
            for i, client in enumerate(clients):
                assert download(client, "shared-id", "same.txt") == f"org {i}".encode()
                assert {e.path for e in client.list_files(id="shared-id")} == {
                    "same.txt",
                    f"only{i}.txt",
                }
            with own.client(keys[1]) as second:
                response = files_call(second, "delete", id="shared-id", path="same.txt")
                assert response.status_code == 200, response.text
                assert_error(files_call(second, "delete", id="shared-id", path="only0.txt"), 404)
            assert download(clients[0], "shared-id", "same.txt") == b"org 0"
        finally:
            for client in clients:
                client.close()
    finally:
        stop_server(own)


def test_delete_touches_only_its_thread(sdk: Any, api: httpx.Client) -> None:
    threads = [new_thread(), new_thread()]
    for t in threads:
        upload(sdk, t, "same.txt", t.encode())
        upload(sdk, t, "dir/sub/f.txt", b"f")
    for path in ("same.txt", "dir"):
        response = files_call(api, "delete", source="thread", id=threads[0], path=path)
        assert response.status_code == 200 and response.json() == {"deleted": True}
    assert listing(api, threads[0]) == {}
    assert set(listing(api, threads[1])) == {"same.txt", "dir", "dir/sub", "dir/sub/f.txt"}
    assert download(sdk, threads[1], "same.txt") == threads[1].encode()


# -- validation ------------------------------------------------------------------------------------

PATH_ACTIONS = ("upload_url", "download_url", "delete")
BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"source": "bucket"}, "source must be 'thread' or 'volume'"),
    ({"source": 1}, "source: Input should be a valid string"),
    ({"id": ""}, "id must not be empty"),
    ({"id": "a" * 129}, "id exceeds maximum length of 128 characters"),
    ({"id": 7}, "id: Input should be a valid string"),
    ({"path": 5}, "path: Input should be a valid string"),
    ({"path": "../x"}, "path must not contain '..' segments"),
    ({"path": "a/../b"}, "path must not contain '..' segments"),
    ({"path": "/etc/passwd"}, "path must be relative to the storage root (no leading '/')"),
    ({"path": "a\\b"}, "path must not contain NUL, backslashes or control characters"),
    ({"path": "a\x00b"}, "path must not contain NUL, backslashes or control characters"),
    ({"path": "a\nb"}, "path must not contain NUL, backslashes or control characters"),
    ({"path": "x" * 256}, "a path segment exceeds 255 bytes"),
]
ID_PATTERN = (
    "id must start with alphanumeric and contain only alphanumeric, hyphens, or underscores"
)
BAD_IDS = ["-x", "_x", "a/b", "../x", "a b", "ä"]


@pytest.fixture(scope="module")
def existing(server: Server) -> str:
    """A thread with a home, so only the request decides the answer."""
    thread_id = new_thread()
    with server.client() as api:
        response = files_call(api, "upload_url", id=thread_id, path="x", content_length=1)
    assert response.status_code == 200, response.text
    return thread_id


def body_for(existing: str, **changes: Any) -> dict[str, Any]:
    base = {"source": "thread", "id": existing, "path": "x.txt", "content_length": 1}
    return base | changes


@pytest.mark.parametrize("action", ["list", *PATH_ACTIONS])
@pytest.mark.parametrize(("changes", "message"), BAD_FIELDS)
def test_bad_fields(
    api: httpx.Client, existing: str, action: str, changes: dict[str, Any], message: str
) -> None:
    assert_error(files_call(api, action, **body_for(existing, **changes)), 400, message=message)


@pytest.mark.parametrize("action", ["list", *PATH_ACTIONS])
@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_ids(api: httpx.Client, action: str, bad_id: str) -> None:
    body = {"source": "thread", "id": bad_id, "path": "x", "content_length": 1}
    assert_error(files_call(api, action, **body), 400, message=ID_PATTERN)


@pytest.mark.parametrize("action", ["list", *PATH_ACTIONS])
def test_missing_id_and_non_object_bodies(api: httpx.Client, action: str) -> None:
    assert_error(files_call(api, action, path="x", content_length=1), 400, message="id is required")
    method = "DELETE" if action == "delete" else "POST"
    url = "/v1/files" if action == "delete" else f"/v1/files/{action}"
    headers = {"Content-Type": "application/json"}
    for content, message in (
        ("[]", "request body must be a JSON object"),
        ('"x"', "request body must be a JSON object"),
        ("{", "request body is not valid JSON"),
    ):
        response = api.request(method, url, content=content, headers=headers)
        assert_error(response, 400, message=message)


@pytest.mark.parametrize("action", PATH_ACTIONS)
def test_path_is_required_and_must_name_a_file(
    api: httpx.Client, existing: str, action: str
) -> None:
    body = body_for(existing)
    del body["path"]
    assert_error(files_call(api, action, **body), 400, message="path is required")
    for path in ("", ".", "./", ".//."):
        response = files_call(api, action, **body_for(existing, path=path))
        assert_error(response, 400, message="path must name a file")


def test_list_accepts_the_root_in_any_spelling(api: httpx.Client, existing: str) -> None:
    for path in (None, "", ".", "./"):
        assert listing(api, existing, path) == {}


@pytest.mark.parametrize(
    ("content_length", "message"),
    [
        (-1, "content_length must not be negative"),
        (TEN_GIB + 1, "content_length exceeds maximum of 10737418240 bytes (10 GiB)"),
        (2**70, "content_length exceeds maximum of 10737418240 bytes (10 GiB)"),
        ("5", "content_length: Input should be a valid integer"),
        (1.5, "content_length: Input should be a valid integer"),
        (True, "content_length: Input should be a valid integer"),
        (None, "content_length is required"),
    ],
)
def test_bad_content_length(
    api: httpx.Client, existing: str, content_length: Any, message: str
) -> None:
    body = body_for(existing, content_length=content_length)
    if content_length is None:
        del body["content_length"]
    assert_error(files_call(api, "upload_url", **body), 400, message=message)


def test_content_length_limits_through_the_sdk(sdk: Any, existing: str) -> None:
    with pytest.raises(APIValidationError) as refused:
        sdk.upload_url(path="huge", content_length=TEN_GIB + 1, id=existing)
    assert refused.value.status_code == 400
    assert str(refused.value.message) == (
        "content_length exceeds maximum of 10737418240 bytes (10 GiB)"
    )
    largest = sdk.upload_url(path="huge", content_length=TEN_GIB, id=existing)
    assert largest.method == "PUT"
    assert_error(httpx.put(largest.url, content=b"x", timeout=10), 400)


@pytest.mark.parametrize("action", ["list", *PATH_ACTIONS])
def test_volumes_are_not_found_yet(api: httpx.Client, existing: str, action: str) -> None:
    response = files_call(api, action, **body_for(existing, source="volume"))
    assert_error(response, 404, message=f"volume {existing} not found")


def test_unknown_signed_token_and_method(server: Server) -> None:
    assert_error(
        httpx.get(url_with(server, "junk"), timeout=10), 403, message="signature does not match"
    )
    assert_error(
        httpx.get(url_with(server, "a.b.c"), timeout=10), 403, message="signature does not match"
    )
    response = httpx.delete(url_with(server, "a.b.c"), timeout=10)
    assert response.status_code == 405
    assert set(response.json()) == {"error", "message"}
