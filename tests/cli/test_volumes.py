"""``baponi volumes`` and ``baponi connections``: real CLI processes on a real home."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import BAPONI, cli, org_id_of, read_store, run_cli

pytestmark = pytest.mark.slow  # a dozen CLI processes per test


def test_cli_volumes_create_list_delete_and_bind(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "volumes", "create", "reports").startswith("created volume reports (vol_")
    assert "read-only" in cli(home, "volumes", "create", "archive", "--read-only")
    listing = cli(home, "volumes", "list").splitlines()
    assert [line.split()[0] for line in listing] == ["archive", "reports"]
    assert listing[0].endswith("read-only") and listing[1].endswith("read-write")

    secret = cli(
        home, "keys", "create", "--name", "vk", "--volume", "reports", "--volume", "archive"
    )
    assert secret.startswith("sk-local-") and len(secret.splitlines()) == 1
    keys = cli(home, "keys", "list")
    assert "  vk  profile=default  volumes=archive,reports" in keys

    unknown = run_cli(home, "keys", "create", "--name", "nope", "--volume", "missing")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "baponi: volume missing not found in organisation default" in unknown.stderr
    assert " nope " not in cli(home, "keys", "list")

    bad = run_cli(home, "volumes", "create", "Bad_Slug")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "lower-case letters, digits or '-'" in bad.stderr

    deleted = cli(home, "volumes", "delete", "reports").splitlines()
    assert deleted == [
        "deleted volume reports",
        "(its files go at the server's next sweep: at its start, then every 10 minutes)",
    ]
    assert "volumes=archive\n" in cli(home, "keys", "list") + "\n"  # unbound from the key
    again = run_cli(home, "volumes", "delete", "reports")
    assert again.returncode == 1 and "volume reports not found" in again.stderr
    elsewhere = run_cli(home, "volumes", "list", "--org", "nowhere")
    assert elsewhere.returncode == 1 and "organisation nowhere not found" in elsewhere.stderr


def test_cli_connections_never_show_their_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli(home, "orgs", "create", "acme")
    made = run_cli(
        home,
        "connections",
        "create",
        "lake",
        "--org",
        "acme",
        "--url",
        "s3://bucket/prefix",
        "--option",
        "endpoint_url=http://127.0.0.1:9",
        "--option-from-env",
        "secret=LAKE_SECRET",
        env={"LAKE_SECRET": "very-secret-value"},
    )
    assert made.returncode == 0, made.stderr
    assert "very-secret-value" not in made.stdout
    listing = cli(home, "connections", "list", "--org", "acme")
    assert listing.split() == [
        "lake",
        listing.split()[1],
        "read-write",
        "s3://bucket/prefix",
        "options=endpoint_url,secret",
    ]
    assert cli(home, "volumes", "list", "--org", "acme") == ""  # volumes list shows volumes
    acme = org_id_of(home, "acme")
    stored = read_store(home, lambda store: store.get_volume(acme, "lake"))
    assert stored is not None  # the credentials are kept for the server, which needs them
    assert stored.options == {"endpoint_url": "http://127.0.0.1:9", "secret": "very-secret-value"}

    wrong_kind = run_cli(home, "keys", "create", "--org", "acme", "--volume", "lake")
    assert wrong_kind.returncode == 1
    assert "lake is a storage connection, not a volume" in wrong_kind.stderr
    cli(home, "keys", "create", "--org", "acme", "--name", "ck", "--connection", "lake")
    assert "  ck  profile=default  connections=lake" in cli(home, "keys", "list", "--org", "acme")
    missing_env = run_cli(
        home, "connections", "create", "x", "--url", "s3://b", "--option-from-env", "k=NOT_SET_X"
    )
    assert missing_env.returncode != 0 and "NOT_SET_X is not set" in missing_env.stderr
    assert run_cli(home, "volumes", "delete", "lake", "--org", "acme").returncode == 1
    assert cli(home, "connections", "delete", "lake", "--org", "acme").splitlines() == [
        "deleted storage connection lake",
        "(its cached copy goes at the server's next sweep: at its start, then every 10 minutes)",
    ]
    assert cli(home, "connections", "list", "--org", "acme") == ""


def test_cli_help_has_examples() -> None:
    for group in ("volumes", "connections"):
        done = subprocess.run(
            [*BAPONI, group, "create", "--help"], capture_output=True, text=True, check=True
        )
        assert f"baponi {group} create" in done.stdout and "examples:" in done.stdout
    done = subprocess.run([*BAPONI, "keys", "create", "--help"], capture_output=True, text=True)
    assert "--volume SLUG" in done.stdout and "--connection SLUG" in done.stdout
