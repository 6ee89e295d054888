"""Runtimes through the API, on the real sandbox and a real server: a custom image's root,
Env and WorkingDir; host tools absent; a hostile image's tricks reaching no sandbox; a
language the runtime lacks (400); a runtime not installed (503); a replace while an
execution runs on the old generation."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import (
    Server,
    assert_error,
    cli,
    import_runtime,
    marker_processes,
    sleep_marker,
    start_server,
    stop_server,
    wait_until,
)
from tests.runtimes.images import Image, busybox_layer, file, write_layout
from tests.runtimes.test_import import hostile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="images are unpacked as root here")


def marked(marker: str) -> Image:
    return Image(
        [busybox_layer(), [file("marker", marker)]],
        {"PATH": "/bin", "MARKER": f"env-{marker}"},
        "/work/here",
    )


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("images")
    runtimes = where / "runtimes"
    import_runtime(runtimes, "default", "host:")
    import_runtime(runtimes, "bb", str(write_layout(marked("one"), where / "bb")))
    sentinels = where / "host"
    sentinels.mkdir()
    (sentinels / "sentinel").write_text("keep")
    import_runtime(runtimes, "hostile", str(write_layout(hostile(sentinels), where / "hostile")))
    return runtimes


@pytest.fixture(scope="module")
def server(runtimes: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    for profile, runtime in (("bbp", "bb"), ("hostilep", "hostile")):
        cli(home, "profiles", "set", profile, "--runtime", runtime, "--runtimes", str(runtimes))
    running = start_server(home, "--runtimes", str(runtimes))
    yield running
    stop_server(running)


def pids_of(marker: str) -> list[int]:
    """Host pids of the processes whose command line has ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def key_for(server: Server, profile: str) -> str:
    return server.new_key("--profile", profile)


def sh(server: Server, key: str, code: str, language: str = "bash") -> dict[str, Any]:
    with server.client(key) as api:
        response = api.post(
            "/v1/sandbox/execute",
            json={"code": textwrap.dedent(code), "language": language, "timeout": 30},
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_custom_image_is_the_sandbox_root(server: Server) -> None:
    key = key_for(server, "bbp")
    client = server.sdk(key)
    try:
        result = client.execute(
            "cat /marker; echo; echo $MARKER; pwd; echo $PATH $HOME; id -u", language="bash"
        )
    finally:
        client.close()
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "one",
        "env-one",  # the image's Env
        "/work/here",  # its WorkingDir
        "/home/baponi/.local/bin:/home/baponi/.npm-global/bin:/bin /home/baponi",
        "1000",
    ]


def test_host_tools_absent_from_the_runtime_are_absent(server: Server) -> None:
    body = sh(
        server,
        key_for(server, "bbp"),
        """
        ls /
        for tool in /usr/bin/python3 /usr/bin/gcc /usr/bin/node /bin/bash /usr/local /usr; do
            test -e $tool && echo "present $tool"
        done
        cat /etc/hostname; cat /etc/passwd
        """,
    )
    assert body["exit_code"] == 0, body
    lines = body["stdout"].splitlines()
    top = lines[: lines.index("sandbox")]
    assert top == ["bin", "data", "dev", "etc", "home", "marker", "proc", "run", "tmp", "work"]
    assert not [line for line in lines if line.startswith("present")]
    assert "baponi:x:1000:1000:Baponi sandbox:/home/baponi:/bin/bash" in lines  # generated


def test_no_setuid_file_or_device_reaches_a_sandbox(server: Server) -> None:
    body = sh(
        server,
        key_for(server, "hostilep"),
        """
        find / -xdev -perm -4000 -print; find / -xdev -perm -2000 -print
        find / \\( -path /proc -o -path /dev -o -path /sys \\) -prune -o \\
            \\( -type c -o -type b -o -type p -o -type s \\) -print
        stat -c '%a %F' /bin/suid /dev-null
        cat /host-shadow; echo
        for link in /abs-link /rel-link; do cat $link/sentinel 2>/dev/null || echo unreachable; done
        """,
    )
    assert body["exit_code"] == 0, body
    # No setuid or setgid file, no device, FIFO or socket but bwrap's /dev; the host's
    # files are out of reach through the image's links (its /tmp is the sandbox's own).
    assert body["stdout"].splitlines() == [
        "755 regular file",
        "666 regular empty file",
        "the image's own shadow",
        "unreachable",
        "unreachable",
    ], body


def test_a_language_the_runtime_lacks_is_refused(server: Server) -> None:
    with server.client(key_for(server, "bbp")) as api:
        response = api.post("/v1/sandbox/execute", json={"code": "print(1)", "language": "python"})
    assert_error(
        response,
        400,
        "validation_error",
        "language python is not available in runtime bb (it has: bash)",
    )


def test_a_runtime_not_installed_is_refused_and_said_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "runtimes"
    empty.mkdir()
    running = start_server(tmp_path / "home", "--runtimes", str(empty))
    try:
        with running.client() as api:
            response = api.post("/v1/sandbox/execute", json={"code": "print(1)"})
        assert_error(
            response, 503, "service_unavailable", "runtime default is not installed on this server"
        )
        assert httpx.get(f"{running.url}/ready").status_code == 200  # other runtimes may serve
    finally:
        stop_server(running)
    assert "runtime default is not installed in" in running.log


def test_a_replace_leaves_a_running_execution_on_its_generation(
    server: Server, runtimes: Path, tmp_path: Path
) -> None:
    key = key_for(server, "bbp")
    (old,) = os.listdir(runtimes / "bb")
    pause = sleep_marker(60)  # ended by the test once it has replaced the runtime
    results: list[dict[str, Any]] = []
    running = threading.Thread(
        target=lambda: results.append(sh(server, key, f"sleep {pause}; cat /marker; echo $MARKER"))
    )
    running.start()
    try:
        wait_until(lambda: marker_processes(pause), 20, "the execution's sleep")
        import_runtime(
            runtimes, "bb", str(write_layout(marked("two"), tmp_path / "two")), "--replace"
        )
        assert old in os.listdir(runtimes / "bb")  # held by the running sandbox
        fresh = sh(server, key, "cat /marker; echo $MARKER")
        assert fresh["stdout"] == "twoenv-two\n"
    finally:
        for pid in pids_of(pause):
            os.kill(pid, signal.SIGTERM)
        running.join(30)
    assert results and results[0]["exit_code"] == 0, results
    assert results[0]["stdout"] == "oneenv-one\n"  # finished on the root it started on
    # Its sandbox was the last on the old generation: freed, it took the files with it.
    wait_until(lambda: old not in os.listdir(runtimes / "bb"), 10, "the old generation to go")
    assert len(os.listdir(runtimes / "bb")) == 1
