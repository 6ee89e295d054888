"""The operator CLI: real processes on a real home directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import BAPONI, Server, assert_error, cli, run_cli


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_help_lists_the_commands() -> None:
    done = subprocess.run(
        [*BAPONI, "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    for command in ("serve", "keys", "orgs", "profiles"):
        assert command in done.stdout
    assert done.returncode == 0


def test_no_command_is_an_error() -> None:
    done = subprocess.run(BAPONI, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "COMMAND" in done.stderr or "required" in done.stderr


@pytest.mark.slow
def test_keys_create_prints_the_key_alone(home: Path) -> None:
    done = run_cli(home, "keys", "create", "--name", "ci")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sk-local-")
    assert lines[0] == lines[0].strip()
    assert len(lines[0]) > len("sk-local-") + 16
    again = cli(home, "keys", "create", "--name", "ci")
    assert again != lines[0]


@pytest.mark.slow
def test_keys_list_never_shows_secrets(home: Path) -> None:
    secret = cli(home, "keys", "create", "--name", "listed")
    listing = cli(home, "keys", "list")
    assert "listed" in listing
    assert secret not in listing
    assert secret[:14] in listing  # the prefix, to recognise it


@pytest.mark.slow
def test_orgs_create_and_duplicate(home: Path) -> None:
    created = run_cli(home, "orgs", "create", "acme", "--max-concurrency", "3")
    assert created.returncode == 0, created.stderr
    assert "acme" in created.stdout
    duplicate = run_cli(home, "orgs", "create", "acme")
    assert duplicate.returncode != 0
    assert "acme already exists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    assert duplicate.stdout == ""
    listing = cli(home, "orgs", "list")
    assert listing.count("acme") == 1
    assert "max_concurrency=3" in listing


@pytest.mark.parametrize("name", ["-bad", "a/b", "x" * 65, ""])
@pytest.mark.slow
def test_orgs_create_rejects_bad_names(home: Path, name: str) -> None:
    done = subprocess.run(
        [*BAPONI, "orgs", "create", "--home", str(home), "--", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "organisation name must be 1-64 letters" in done.stderr
    assert "Traceback" not in done.stderr
    assert cli(home, "orgs", "list").split()[0] == "default"
    assert len(cli(home, "orgs", "list").splitlines()) == 1


@pytest.mark.slow
def test_key_for_unknown_org_or_profile_fails(home: Path) -> None:
    no_org = run_cli(home, "keys", "create", "--org", "nowhere")
    assert no_org.returncode != 0
    assert "organisation nowhere not found" in no_org.stderr
    no_profile = run_cli(home, "keys", "create", "--profile", "nothing")
    assert no_profile.returncode != 0
    assert "profile nothing not found" in no_profile.stderr
    assert no_profile.stdout == ""


@pytest.mark.slow
def test_profiles_set_and_list(home: Path) -> None:
    done = run_cli(
        home,
        "profiles",
        "set",
        "small",
        "--cpus",
        "0.5",
        "--memory",
        "256",
        "--pids",
        "64",
        "--max-timeout",
        "30",
        "--tmp",
        "16",
        "--output",
        "128",
    )
    assert done.returncode == 0, done.stderr
    listing = cli(home, "profiles", "list")
    small = next(line for line in listing.splitlines() if line.startswith("small:"))
    assert small == (
        "small: cpus=0.5 memory=256MiB pids=64 max_timeout=30s tmp=16MiB output=128KiB "
        "runtime=default network=none"
    )
    assert any(line.startswith("default:") for line in listing.splitlines())
    # changing one limit keeps the others
    cli(home, "profiles", "set", "small", "--max-timeout", "45")
    small = next(
        line for line in cli(home, "profiles", "list").splitlines() if line.startswith("small:")
    )
    assert small == (
        "small: cpus=0.5 memory=256MiB pids=64 max_timeout=45s tmp=16MiB output=128KiB "
        "runtime=default network=none"
    )


@pytest.mark.parametrize(
    "limit", [("--max-timeout", "3601"), ("--max-timeout", "0"), ("--cpus", "0"), ("--memory", "1")]
)
@pytest.mark.slow
def test_profiles_set_rejects_out_of_bounds(home: Path, limit: tuple[str, str]) -> None:
    done = run_cli(home, "profiles", "set", "odd", *limit)
    assert done.returncode != 0
    assert "must be between" in done.stderr
    assert "odd:" not in cli(home, "profiles", "list")


@pytest.mark.slow
def test_revoked_key_gets_401(server: Server) -> None:
    secret = server.new_key("--name", "revoke-me")
    with server.client(secret) as client:
        assert client.post("/v1/sandbox/execute", json={"code": "print(1)"}).status_code == 200
        listing = cli(server.home, "keys", "list")
        key_id = next(line.split()[0] for line in listing.splitlines() if " revoke-me " in line)
        assert cli(server.home, "keys", "revoke", key_id) == f"revoked {key_id}"
        response = client.post("/v1/sandbox/execute", json={"code": "print(1)"})
        assert_error(response, 401, "unauthorized")
    assert "(revoked)" in next(
        line for line in cli(server.home, "keys", "list").splitlines() if line.startswith(key_id)
    )
    again = run_cli(server.home, "keys", "revoke", key_id)
    assert again.returncode != 0
    assert "not found or already revoked" in again.stderr
    # the server's own key still works
    with server.client() as client:
        assert (
            client.post("/v1/sandbox/execute", json={"code": "print(2)"}).json()["stdout"] == "2\n"
        )


def test_orgs_retention_is_set_and_listed(home: Path) -> None:
    assert cli(home, "orgs", "create", "daily", "--retention", "1d").endswith("retention 1d")
    assert cli(home, "orgs", "create", "monthly").endswith("retention 30d")  # the default
    changed = cli(home, "orgs", "set", "monthly", "--retention", "unlimited")
    assert changed == "organisation monthly: max concurrency 8, retention unlimited"
    both = cli(home, "orgs", "set", "daily", "--retention", "7D", "--max-concurrency", "2")
    assert both == "organisation daily: max concurrency 2, retention 7d"
    listing = {line.split()[0]: line.split()[-1] for line in cli(home, "orgs", "list").splitlines()}
    assert listing == {
        "daily": "retention=7d",
        "default": "retention=30d",
        "monthly": "retention=unlimited",
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30", "expected days such as 1d or 30d, or unlimited"),
        ("1.5d", "expected days such as 1d or 30d, or unlimited"),
        ("\u00b2d", "expected days such as 1d or 30d, or unlimited"),
        ("forever", "expected days such as 1d or 30d, or unlimited"),
        ("0d", "retention must be between 1 and 36500 days, or unlimited"),
        ("40000d", "retention must be between 1 and 36500 days, or unlimited"),
    ],
)
def test_orgs_set_refuses_bad_retention(home: Path, value: str, message: str) -> None:
    done = run_cli(home, "orgs", "set", "default", "--retention", value)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert cli(home, "orgs", "list").split()[-1] == "retention=30d"


def test_orgs_set_needs_a_change(home: Path) -> None:
    done = run_cli(home, "orgs", "set", "default")
    assert done.returncode != 0
    assert "give --max-concurrency, --retention or both" in done.stderr
