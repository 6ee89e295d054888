"""``baponi serve`` refuses to start, for every known reason, with one line on stderr and a
non-zero exit, never a traceback nor a process left hanging. The real command."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from baponi_core._config import Settings
from tests.harness import BAPONI, cli, free_port, tmpfs

START_TIMEOUT_S = 60  # a process still there by then never exits on its own


def serve(home: Path, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    """``baponi serve`` that must fail: it has to exit by itself."""
    command = [*BAPONI, "serve", "--home", str(home), "--port", str(port or free_port()), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
    )


def assert_refused(done: subprocess.CompletedProcess[str], line: str, code: int = 1) -> None:
    """Exit ``code`` and exactly one line on stderr, which is ``line``."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.stderr.splitlines() == [line], done.stderr
    assert "listening" not in done.stdout, done.stdout


def made_home(tmp_path: Path) -> Path:
    """A home with its database made (by an operator command), no WAL left beside it."""
    home = tmp_path / "home"
    cli(home, "orgs", "list")
    database = Settings.at(home).database
    for leftover in ("-wal", "-shm"):
        Path(f"{database}{leftover}").unlink(missing_ok=True)
    return home


def overwrite(path: Path, offset: int, size: int) -> None:
    with path.open("r+b") as out:
        out.seek(offset)
        out.write(os.urandom(size))


def test_a_database_with_its_header_overwritten(tmp_path: Path) -> None:
    home = made_home(tmp_path)
    database = Settings.at(home).database
    overwrite(database, 0, 100)
    assert_refused(
        serve(home),
        f"baponi: cannot start: database {database}: file is not a database; "
        "restore it from a backup",
    )


def test_a_database_damaged_inside(tmp_path: Path) -> None:
    home = made_home(tmp_path)
    database = Settings.at(home).database
    page = 4096
    for number in range(1, database.stat().st_size // page):  # every page but the header's
        overwrite(database, number * page, page)
    done = serve(home)
    assert_refused(done, done.stderr.strip())  # one line; what SQLite finds first varies
    assert done.stderr.startswith("baponi: cannot start: ")
    assert "damaged" in done.stderr or "not a database" in done.stderr, done.stderr


def test_a_database_path_that_is_a_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    database = Settings.at(home).database
    database.mkdir(parents=True)
    assert_refused(
        serve(home), f"baponi: cannot start: database {database} is a directory, not a file"
    )


def test_a_home_that_is_a_file_or_under_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    assert_refused(serve(home), f"baponi: cannot start: home {home} is not a directory")
    assert_refused(
        serve(home / "below"), f"baponi: cannot start: home {home / 'below'}: Not a directory"
    )


@pytest.fixture()
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with tmpfs(tmp_path / "ro", "ro,size=1m") as where:
        yield where


def test_a_home_that_cannot_be_written(read_only_dir: Path) -> None:
    home = read_only_dir / "home"
    assert_refused(serve(home), f"baponi: cannot start: home {home}: Read-only file system")


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert_refused(
            serve(tmp_path / "home", port=port),
            f"baponi: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use",
        )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--port", "http"],
            "baponi serve: argument --port: not a port number: 'http' (see baponi serve --help)",
        ),
        (["--no-such-flag"], "baponi: unrecognized arguments: --no-such-flag (see baponi --help)"),
        (
            ["--idle-timeout", "0"],
            "baponi serve: argument --idle-timeout: expected whole seconds 1..86400, got '0' "
            "(see baponi serve --help)",
        ),
    ],
)
def test_bad_flags(tmp_path: Path, args: list[str], line: str) -> None:
    assert_refused(serve(tmp_path / "home", *args), line, code=2)


def missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.pem"


def not_pem(tmp_path: Path) -> Path:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    return tmp_path / "junk.pem"


@pytest.mark.parametrize("make", [missing, not_pem])
def test_a_webhook_ca_file_that_cannot_be_loaded(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    pem = make(tmp_path)
    done = serve(tmp_path / "home", "--webhook-ca-file", str(pem))
    assert_refused(done, done.stderr.strip())
    assert done.stderr.startswith(f"baponi: cannot start: webhook CA file {pem}: "), done.stderr
