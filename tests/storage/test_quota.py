"""The thread quota the kernel keeps: each home a filesystem of its own (1 MiB here), on a
server of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness import Server, cli, org_id_of, start_server, stop_server, wait_until
from tests.harness import run_in_thread as run

QUOTA = 1 << 20
ROOM = 1.15 * QUOTA  # the filesystem holds the quota; its image, a little more

# Writes 200 kB files until a write fails; the traceback says why.
FILL = """
import itertools
for i in itertools.count():
    with open(f"/home/baponi/fill{i}", "wb") as f:
        f.write(b"x" * 200_000)
"""
# Writes until a write fails, and says with which errno.
FILL_QUIETLY = """
import errno, itertools
try:
    for i in itertools.count():
        with open(f"/home/baponi/{NAME}{i}", "wb") as f:
            f.write(b"x" * 100_000)
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("quota") / "home", "--thread-quota", "1M")
    yield server
    stop_server(server)


@pytest.fixture
def api(small: Server) -> Iterator[httpx.Client]:
    with small.client() as client:
        yield client


def home_bytes(server: Server, thread: str) -> int:
    """What the home holds, as the server sees it (its filesystem mounted)."""
    (home,) = server.threads.glob(f"*/{thread}")
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file())


def image_bytes(server: Server, thread: str) -> int:
    """What the home takes on the host's disk: the blocks of its image."""
    (image,) = (server.home / "threads").glob(f"*/{thread}.img")
    return image.stat().st_blocks * 512


def test_writing_past_the_quota_fails_inside_the_sandbox(small: Server, api: httpx.Client) -> None:
    result = run(api, FILL, "fill")
    assert "OSError: [Errno 28] No space left on device" in str(result["stderr"])
    assert result["error"] == "disk_quota_exceeded"
    assert result["success"] is False
    record = api.get(f"/v1/executions/{result['trace_id']}").json()
    assert record["status"] == "failed"
    assert 0.9 * QUOTA < home_bytes(small, "fill") <= ROOM
    assert image_bytes(small, "fill") <= ROOM


def test_a_program_that_fails_otherwise_is_not_blamed_on_the_quota(api: httpx.Client) -> None:
    result = run(api, "raise SystemExit(3)", "unrelated")
    assert result["exit_code"] == 3 and result["error"] is None


def test_a_new_home_is_empty_and_the_sandbox_s_own(api: httpx.Client) -> None:
    code = (
        "import os\nst = os.stat('.')\nprint(os.listdir('.'), oct(st.st_mode & 0o777), st.st_uid)"
    )
    assert run(api, code, "fresh")["stdout"] == "[] 0o700 1000\n"  # no lost+found


def test_a_file_unlinked_while_open_still_counts(small: Server, api: httpx.Client) -> None:
    code = """
import errno, os
hidden = open("hidden", "wb")
os.unlink("hidden")
try:
    while True:
        hidden.write(b"x" * 65536)
        hidden.flush()
except OSError as exc:
    print("hidden:", errno.errorcode[exc.errno])
try:
    with open("visible", "wb") as f:
        f.write(b"y" * 200_000)
except OSError as exc:
    print("visible:", errno.errorcode[exc.errno])
"""
    result = run(api, code, "unlinked")
    assert result["stdout"] == "hidden: ENOSPC\nvisible: ENOSPC\n", result
    assert image_bytes(small, "unlinked") <= ROOM
    # Closed with the sandbox, it is gone, and its room with it.
    again = run(api, "open('after', 'wb').write(b'z' * 500_000)\nprint('ok')", "unlinked")
    assert again["stdout"] == "ok\n", again


def test_overshoots_do_not_add_up_across_runs(small: Server, api: httpx.Client) -> None:
    for n in range(6):
        result = run(api, FILL_QUIETLY.replace("{NAME}", f"run{n}_"), "runs")
        assert result["stdout"] == "ENOSPC\n", result
    assert home_bytes(small, "runs") <= ROOM
    assert image_bytes(small, "runs") <= ROOM


def test_inodes_are_bounded(api: httpx.Client) -> None:
    code = """
import errno, os
made = 0
try:
    while True:
        open(f"e{made}", "wb").close()
        made += 1
except OSError as exc:
    print(made, errno.errorcode[exc.errno])
"""
    made, name = str(run(api, code, "inodes")["stdout"]).split()
    assert name == "ENOSPC"
    assert 10 < int(made) < 100  # one inode per 16 KiB of the filesystem
    listed = api.post("/v1/files/list", json={"source": "thread", "id": "inodes"}).json()
    assert len(listed["files"]) == int(made)


def test_a_full_home_can_be_cleaned_up(api: httpx.Client) -> None:
    assert run(api, FILL, "tidy")["error"] == "disk_quota_exceeded"
    cleanup = "import os\nfor f in os.listdir('.'):\n    os.unlink(f)\nprint('ok')"
    result = run(api, cleanup, "tidy")
    assert result["stdout"] == "ok\n" and result["error"] is None
    result = run(api, "open('again', 'wb').write(b'x' * 800_000)\nprint('ok')", "tidy")
    assert result["stdout"] == "ok\n", result


def test_other_threads_are_not_affected(api: httpx.Client) -> None:
    assert run(api, FILL, "greedy")["error"] == "disk_quota_exceeded"
    result = run(api, "open('a', 'wb').write(b'x' * 800_000)\nprint('fine')", "modest")
    assert result["stdout"] == "fine\n"


def test_executions_without_a_thread_have_no_thread_quota(api: httpx.Client) -> None:
    code = "open('/home/baponi/big', 'wb').write(b'x' * 3_000_000)\nprint('ok')"
    response = api.post("/v1/sandbox/execute", json={"code": code})
    assert response.json()["stdout"] == "ok\n"  # an ephemeral home is a sized tmpfs instead


def test_an_upload_beyond_the_quota_is_refused(api: httpx.Client) -> None:
    body = {"source": "thread", "id": "uploads", "path": "a.bin", "content_length": QUOTA + 1}
    response = api.post("/v1/files/upload_url", json=body)
    assert response.status_code == 429
    error = response.json()
    assert error["error"] == "rate_limited"
    # Used: the filesystem's own metadata.
    assert re.fullmatch(
        rf"thread disk quota exceeded \(\d+ of {QUOTA} bytes used, upload of {QUOTA + 1} bytes\)",
        error["message"],
    )


def test_a_home_holds_its_whole_quota(api: httpx.Client) -> None:
    body = {"source": "thread", "id": "exact", "path": "all.bin", "content_length": QUOTA}
    granted = api.post("/v1/files/upload_url", json=body).json()
    assert httpx.put(granted["url"], content=b"q" * QUOTA).status_code == 200
    more = {**body, "path": "more.bin", "content_length": 100_000}
    assert api.post("/v1/files/upload_url", json=more).status_code == 429


def test_concurrent_uploads_cannot_add_up(small: Server, api: httpx.Client) -> None:
    size = 400_000  # each fits alone; three do not fit together
    grants = [
        api.post(
            "/v1/files/upload_url",
            json={"source": "thread", "id": "parallel", "path": f"{n}.bin", "content_length": size},
        ).json()
        for n in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda g: httpx.put(g["url"], content=b"u" * size), grants))
    stored = [n for n, answer in enumerate(answers) if answer.status_code == 200]
    assert len(stored) == 2, [a.status_code for a in answers]
    for answer in answers:
        if answer.status_code != 200:
            assert answer.status_code == 429, answer.text
            assert answer.json()["error"] == "rate_limited"
    listed = api.post("/v1/files/list", json={"source": "thread", "id": "parallel"}).json()
    assert sorted((f["path"], f["size"]) for f in listed["files"]) == [
        (f"{n}.bin", size) for n in stored
    ]
    assert image_bytes(small, "parallel") <= ROOM


def test_homes_are_mounted_only_where_the_server_sees_them(
    small: Server, api: httpx.Client
) -> None:
    assert run(api, "open('seen', 'w').write('x')", "hidden")["success"] is True
    host = Path("/proc/self/mountinfo").read_text()
    assert str(small.home) not in host  # the test's own (the host's) mount namespace
    server = Path(f"/proc/{small.process.pid}/mountinfo").read_text()
    assert f"{small.home}/threads/" in server


def test_a_home_from_before_moves_onto_its_filesystem(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, "--thread-quota", "1M")
    stop_server(server)
    old = home / "threads" / org_id_of(home) / "legacy"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "data.txt").write_text("kept")
    (old / "link").symlink_to("/etc/hostname")  # copied as a link, never followed
    subprocess.run(["chown", "-R", "-h", "64000:64000", str(old)], check=True)
    server = start_server(home, "--thread-quota", "1M")
    try:
        with server.client() as api:
            code = "import os\nprint(open('sub/data.txt').read(), os.readlink('link'))"
            assert run(api, code, "legacy")["stdout"] == "kept /etc/hostname\n"
            assert run(api, FILL, "legacy")["error"] == "disk_quota_exceeded"
        assert list(old.iterdir()) == []  # in the host's view: all moved into the image
        assert (old.parent / "legacy.img").stat().st_blocks * 512 <= ROOM
    finally:
        stop_server(server)


def test_a_killed_server_leaves_no_mount_or_loop_device(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", "--thread-quota", "1M")
    with server.client() as api:
        assert run(api, "print(1)", "t")["success"] is True
    (image,) = (server.home / "threads").glob("*/t.img")
    assert attached(image)
    server.process.kill()
    server.process.wait(10)
    wait_until(lambda: not attached(image), within=10, what="the loop device freed")


def attached(image: Path) -> bool:
    found = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
    return bool(found.stdout.strip())


def test_quota_flag_is_validated(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "baponi_cli", "serve", "--thread-quota", "lots"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"BAPONI_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "expected a size such as 10G, got 'lots'" in done.stderr


def test_a_volume_with_a_quota_is_a_filesystem_of_that_size(small: Server) -> None:
    created = cli(small.home, "volumes", "create", "capped", "--quota", "1M")
    assert created.endswith(", read-write, quota 1M"), created
    assert "quota=1M" in cli(small.home, "volumes", "list")
    key = cli(small.home, "keys", "create", "--volume", "capped").split()[-1]
    fill = FILL_QUIETLY.replace("/home/baponi/{NAME}", "/data/capped/v")
    with small.client(key) as api:
        result = api.post("/v1/sandbox/execute", json={"code": fill}).json()
        assert result["stdout"] == "ENOSPC\n", result
        # Another execution sees what the first wrote, and no more room.
        count = "import os\nprint(len(os.listdir('/data/capped')))"
        assert int(api.post("/v1/sandbox/execute", json={"code": count}).json()["stdout"]) > 8
        body = {"source": "volume", "id": "capped", "path": "x", "content_length": 200_000}
        refused = api.post("/v1/files/upload_url", json=body)
    assert refused.status_code == 429
    assert refused.json()["message"].startswith("volume disk quota exceeded (")
    (image,) = (small.home / "volumes").glob("*/*.img")
    assert image.stat().st_blocks * 512 <= ROOM


def test_quotas_are_for_managed_volumes(small: Server) -> None:
    for args, message in (
        (["volumes", "create", "tiny", "--quota", "100K"], "of at least 1M"),
        (
            ["connections", "create", "lake", "--url", "s3://b", "--quota", "1G"],
            "unrecognized arguments: --quota",
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "baponi_cli", *args, "--home", str(small.home)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and message in done.stderr, done.stderr


@pytest.mark.slow
def test_an_idle_home_is_unmounted_and_comes_back(small: Server, api: httpx.Client) -> None:
    assert run(api, "open('kept', 'w').write('still here')", "idle")["success"] is True
    mounts = Path(f"/proc/{small.process.pid}/mountinfo")
    assert "/idle " in mounts.read_text()
    wait_until(lambda: "/idle " not in mounts.read_text(), within=60, what="the idle unmount")
    assert run(api, "print(open('kept').read())", "idle")["stdout"] == "still here\n"
