"""Connectors on a real server, with real sandboxes, through the official SDK and plain
HTTP: credentials reach only the executions of the keys bound to them, as variables and
as read-only files under /run/secrets, and are stored nowhere in clear.

Sandboxed code never prints a secret: it prints SHA-256 digests, so that the secret's
absence from the database, the log and webhook bodies proves something."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trustme

from baponi_core._records import Connector
from baponi_core._sealing import Keyring
from baponi_core._services.connectors import Connectors, Values
from baponi_core._store import Store
from tests.harness import (
    Server,
    cli,
    org_key,
    read_store,
    run_cli,
    start_server,
    stop_server,
    text_of,
    unique,
)
from tests.mcp.test_http import connect
from tests.receiver import Receiver, make_ca

pytestmark = pytest.mark.slow  # a server of its own, and the CLI in processes of its own

EXECUTE = "/v1/sandbox/execute"

# Digests of the variable, of the file, and of every value in every /proc/*/environ;
# the file's mode, owner and whether it can be written; what /run/secrets holds.
PROBE = r"""
import hashlib, json, os
def digest(data):
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()
path = "/run/secrets/{name}/certs/client.pem"
seen = {{"env": None, "file": None, "mode": None, "uid": None, "writable": None}}
if "DB_PASSWORD" in os.environ:
    seen["env"] = digest(os.environ["DB_PASSWORD"])
if os.path.exists(path):
    info = os.stat(path)
    seen.update(file=digest(open(path, "rb").read()), mode=oct(info.st_mode & 0o777),
                uid=info.st_uid)
    try:
        open(path, "ab").close()
        seen["writable"] = True
    except OSError as exc:
        seen["writable"] = exc.errno
seen["tree"] = sorted(os.path.join(d, f)[len("/run/secrets"):]
                      for d, _, fs in os.walk("/run/secrets") for f in fs)
environs = {{}}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        entries = open(f"/proc/{{pid}}/environ", "rb").read().split(b"\0")
    except OSError as exc:
        environs[pid] = exc.errno
        continue
    environs[pid] = [digest(e.partition(b"=")[2]) for e in entries if e]
seen["environs"] = environs
seen["pid"] = str(os.getpid())
print(json.dumps(seen))
"""


def digest(data: str | bytes) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


class Secret:
    """A connector's values, new each time: a password and a file."""

    def __init__(self) -> None:
        self.password = f"pw-{secrets.token_hex(16)}"
        self.pem = f"-----PEM {secrets.token_hex(24)}-----\n".encode()

    def options(self, tmp: Path) -> list[str]:
        pem = tmp / f"{unique('pem')}.pem"
        pem.write_bytes(self.pem)
        return ["--env", f"DB_PASSWORD={self.password}", "--file", f"certs/client.pem=@{pem}"]


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path]
) -> Iterator[Server]:
    """A server of its own (its database and key file are tampered with), logging all."""
    running = start_server(
        tmp_path_factory.mktemp("connectors"),
        "--log-level",
        "debug",
        "--allow-private-webhooks",
        "--webhook-ca-file",
        str(ca_pem[1]),
    )
    yield running
    stop_server(running)


def probe(server: Server, key: str, name: str, **request: Any) -> dict[str, Any]:
    """What PROBE saw, run with ``key`` through the official SDK."""
    with server.sdk(key) as sdk:
        result = sdk.execute(PROBE.format(name=name), timeout=30, **request)
    assert result.exit_code == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def traced(server: Server, key: str, name: str) -> tuple[dict[str, Any], str]:
    """What PROBE saw, run with ``key`` over plain HTTP, and its trace id."""
    with server.client(key) as client:
        response = client.post(EXECUTE, json={"code": PROBE.format(name=name), "timeout": 30})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["exit_code"] == 0, body["stderr"]
    return json.loads(body["stdout"]), body["trace_id"]


def record(server: Server, key: str, trace_id: str) -> dict[str, Any]:
    with server.client(key) as client:
        response = client.get(f"/v1/executions/{trace_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def connector(server: Server, tmp: Path, org: str = "default") -> tuple[str, Secret]:
    name, secret = unique("db").lower(), Secret()
    cli(server.home, "connectors", "create", name, "--org", org, *secret.options(tmp))
    return name, secret


def all_environ_digests(seen: dict[str, Any], but: str | None = None) -> set[str]:
    return {
        value
        for pid, values in seen["environs"].items()
        if pid != but and isinstance(values, list)
        for value in values
    }


def test_a_bound_key_gets_the_variable_and_the_file(box: Server, tmp_path: Path) -> None:
    name, secret = connector(box, tmp_path)
    key = box.new_key("--connector", name)
    seen, trace_id = traced(box, key, name)
    assert seen["env"] == digest(secret.password)
    assert seen["file"] == digest(secret.pem)
    assert seen["mode"] == "0o400" and seen["uid"] == 1000  # the sandbox user's alone
    assert seen["writable"] not in (True, None)  # read-only
    assert seen["tree"] == [f"/{name}/certs/client.pem"]
    # The init (pid 1) and every process but the code's own are without it.
    assert "1" in seen["environs"] and seen["pid"] in seen["environs"]
    assert digest(secret.password) not in all_environ_digests(seen, but=seen["pid"])
    assert digest(secret.password) in seen["environs"][seen["pid"]]  # so the scan works
    body = record(box, key, trace_id)
    assert body["connectors"] == [name]
    with box.sdk(key) as sdk:  # the SDK reads the record, the extra field ignored
        assert sdk.get_execution(trace_id).status == "success"


def test_the_connector_wins_over_a_request_variable(box: Server, tmp_path: Path) -> None:
    name, secret = connector(box, tmp_path)
    key = box.new_key("--connector", name)
    seen = probe(box, key, name, env_vars={"DB_PASSWORD": "from-the-request"})
    assert seen["env"] == digest(secret.password)


def test_another_key_of_the_organisation_sees_nothing(box: Server, tmp_path: Path) -> None:
    name, secret = connector(box, tmp_path)
    box.new_key("--connector", name)
    other = box.new_key()
    seen, trace_id = traced(box, other, name)
    assert seen["env"] is None and seen["file"] is None and seen["tree"] == []
    assert digest(secret.password) not in all_environ_digests(seen)
    assert record(box, other, trace_id)["connectors"] == []


def test_another_organisation_sees_nothing_and_cannot_bind(box: Server, tmp_path: Path) -> None:
    name, secret = connector(box, tmp_path)
    box.new_key("--connector", name)
    org = unique("org")
    stranger = org_key(box, org)
    seen = probe(box, stranger, name)
    assert seen["env"] is None and seen["tree"] == []
    assert digest(secret.password) not in all_environ_digests(seen)
    refused = run_cli(box.home, "keys", "create", "--org", org, "--connector", name)
    assert refused.returncode == 1
    assert f"connector {name} not found in organisation {org}" in refused.stderr
    stranger_id = cli(box.home, "keys", "list", "--org", org).split()[0]
    refused = run_cli(box.home, "keys", "bind", stranger_id, "--connector", name)
    assert refused.returncode == 1 and "not found in organisation default" in refused.stderr


def test_rotate_takes_effect_on_the_next_run(box: Server, tmp_path: Path) -> None:
    name, first = connector(box, tmp_path)
    key = box.new_key("--connector", name)
    assert probe(box, key, name)["env"] == digest(first.password)
    second = Secret()
    out = cli(box.home, "connectors", "rotate", name, *second.options(tmp_path))
    assert second.password not in out
    seen = probe(box, key, name)
    assert seen["env"] == digest(second.password) and seen["file"] == digest(second.pem)


def test_bind_unbind_and_delete(box: Server, tmp_path: Path) -> None:
    name, secret = connector(box, tmp_path)
    key = box.new_key()
    key_id = next(
        line.split()[0] for line in cli(box.home, "keys", "list").splitlines() if key[:14] in line
    )
    cli(box.home, "keys", "bind", key_id, "--connector", name)
    assert f"connectors={name}" in cli(box.home, "keys", "list")
    assert probe(box, key, name)["env"] == digest(secret.password)
    cli(box.home, "keys", "unbind", key_id, "--connector", name)
    assert probe(box, key, name)["env"] is None
    cli(box.home, "keys", "bind", key_id, "--connector", name)
    cli(box.home, "connectors", "delete", name)
    assert name not in cli(box.home, "connectors", "list")
    seen, trace_id = traced(box, key, name)
    assert seen["env"] is None and seen["tree"] == []
    assert record(box, key, trace_id)["connectors"] == []


def _database(server: Server) -> sqlite3.Connection:
    return sqlite3.connect(server.home / "baponi.db", timeout=10)


def _run_marker(server: Server, key: str) -> dict[str, Any]:
    """An execution that would say it ran; its SandboxResult as JSON."""
    with server.client(key) as client:
        response = client.post(EXECUTE, json={"code": "print('it ran')", "timeout": 30})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _refused(body: dict[str, Any]) -> None:
    assert body["error"] == "credential_mount_error", body
    assert body["exit_code"] == -1 and body["success"] is False
    assert body["stdout"] == "" and body["stderr"] == ""  # the code never ran


def test_a_damaged_value_is_a_credential_mount_error(box: Server, tmp_path: Path) -> None:
    name, _ = connector(box, tmp_path)
    key = box.new_key("--connector", name)
    assert _run_marker(box, key)["stdout"] == "it ran\n"
    with closing(_database(box)) as db, db:
        (sealed,) = db.execute("SELECT sealed FROM connectors WHERE name = ?", (name,)).fetchone()
        damaged = bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])
        db.execute("UPDATE connectors SET sealed = ? WHERE name = ?", (damaged, name))
    body = _run_marker(box, key)
    _refused(body)
    assert record(box, key, body["trace_id"])["status"] == "failed"
    assert f"connector {name}: the sealed value is damaged" in box.log
    other = box.new_key()  # a key not bound to it is not affected
    assert _run_marker(box, other)["stdout"] == "it ran\n"
    keys = (box.home / "connectors.keys").read_text()
    refused = run_cli(box.home, "connectors", "rekey")  # would lose it: nothing changes
    assert refused.returncode == 1 and f"connector {name}: " in refused.stderr
    assert (box.home / "connectors.keys").read_text() == keys
    cli(box.home, "connectors", "delete", name)


def test_a_replaced_or_missing_key_file_is_a_credential_mount_error(
    box: Server, tmp_path: Path
) -> None:
    name, secret = connector(box, tmp_path)
    key = box.new_key("--connector", name)
    keys = box.home / "connectors.keys"
    kept = keys.read_bytes()
    try:
        replaced = tmp_path / "other-home"
        cli(replaced, "connectors", "create", "x", "--env", "X=1")  # a key file of its own
        keys.write_bytes((replaced / "connectors.keys").read_bytes())
        _refused(_run_marker(box, key))
        assert "sealed with a key that" in box.log
        keys.unlink()
        _refused(_run_marker(box, key))
        assert "cannot be read" in box.log
    finally:
        keys.write_bytes(kept)
        keys.chmod(0o600)
    assert probe(box, key, name)["env"] == digest(secret.password)


def test_rekey_keeps_every_connector_working(box: Server, tmp_path: Path) -> None:
    name, secret = connector(box, tmp_path)
    key = box.new_key("--connector", name)
    before = (box.home / "connectors.keys").read_text()
    assert "connector(s) with a new key" in cli(box.home, "connectors", "rekey")
    after = (box.home / "connectors.keys").read_text()
    assert len(after.split()) == 1 and after.split()[0] not in before
    assert probe(box, key, name)["env"] == digest(secret.password)


def test_nothing_is_stored_or_sent_in_clear(
    box: Server, tmp_path: Path, ca_pem: tuple[trustme.CA, Path]
) -> None:
    name, secret = connector(box, tmp_path)
    key = box.new_key("--connector", name)
    receiver = Receiver(ca_pem[1]).start(ca_pem[0])
    try:
        with box.client(key) as client:
            streamed = client.post(
                EXECUTE,
                json={"code": PROBE.format(name=name), "timeout": 30},
                headers={"Accept": "application/x-ndjson"},
            )
            queued = client.post(
                EXECUTE,
                json={"code": PROBE.format(name=name), "webhook_url": receiver.url},
                headers={"Prefer": "respond-async"},
            )
        assert streamed.status_code == 200 and queued.status_code == 202
        [delivery] = receiver.wait_for(1)
    finally:
        receiver.stop()
    assert digest(secret.password) in delivery.body.decode()  # the code did run
    assert json.loads(delivery.body)["connectors"] == [name]
    listed = cli(box.home, "connectors", "list") + cli(box.home, "keys", "list")
    for value in (secret.password.encode(), secret.pem.strip()):
        assert value not in delivery.body
        assert value not in streamed.content
        assert value not in listed.encode()
        assert value not in Path(f"{box.home}.log").read_bytes()
        for stored in box.home.glob("baponi.db*"):  # the database, its WAL and shared memory
            assert value not in stored.read_bytes(), stored.name


def test_connector_values_are_checked(box: Server, tmp_path: Path) -> None:
    for args, message in (
        (["Bad_Name", "--env", "A=1"], "connector name 'Bad_Name' is invalid"),
        ([unique("c"), "--env", "PATH=/evil"], "PATH: This environment variable name is reserved"),
        ([unique("c"), "--env", "LD_PRELOAD=/x.so"], "reserved"),
        ([unique("c"), "--file", "../x=@/etc/hostname"], "must be a relative path"),
        ([unique("c"), "--file", "/abs=@/etc/hostname"], "must be a relative path"),
        ([unique("c"), "--file", "x=/etc/hostname"], "the file name starts with @"),
        ([unique("c")], "at least one --env or --file"),
    ):
        done = run_cli(box.home, "connectors", "create", *args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
    name, _ = connector(box, tmp_path)
    done = run_cli(box.home, "connectors", "create", name, "--env", "A=1")
    assert done.returncode == 1 and "already exists" in done.stderr


def test_values_from_our_environment(box: Server) -> None:
    name, password = unique("env").lower(), f"pw-{secrets.token_hex(8)}"
    done = run_cli(
        box.home,
        "connectors",
        "create",
        name,
        "--env-from-env",
        "DB_PASSWORD=TEST_WAREHOUSE_PASSWORD",
        env={"TEST_WAREHOUSE_PASSWORD": password},
    )
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    key = box.new_key("--connector", name)
    assert probe(box, key, name)["env"] == digest(password)
    missing = run_cli(box.home, "connectors", "create", unique("e"), "--env-from-env", "A=NOPE_X")
    assert missing.returncode != 0 and "NOPE_X is not set" in missing.stderr


@pytest.mark.anyio
async def test_mcp_executions_get_the_key_s_connectors(box: Server, tmp_path: Path) -> None:
    name, secret = connector(box, tmp_path)
    bound, other = box.new_key("--connector", name), box.new_key()
    code = (
        "import hashlib, os; print(hashlib.sha256(os.environ['DB_PASSWORD'].encode()).hexdigest())"
    )
    async with connect(box, bound) as client:
        result = await client.call_tool("sandbox_execute", {"code": code})
    assert text_of(result).strip() == digest(secret.password)
    async with connect(box, other) as client:
        result = await client.call_tool("sandbox_execute", {"code": code})
    assert "KeyError: 'DB_PASSWORD'" in text_of(result)


def test_files_that_cannot_be_handed_out_are_a_credential_mount_error(box: Server) -> None:
    """A stored path the sandbox cannot be given (written past the service's checks, as a
    damaged or older database might hold): the code does not run, nothing is written
    outside /run/secrets."""
    name = unique("bad").lower()

    async def plant(store: Store) -> None:
        org = await store.get_org("default")
        assert org is not None
        connectors = Connectors(store, Keyring(box.home / "connectors.keys"))
        blank = Connector(f"con_{name}", org.id, name, (), (), created_at=time.time())
        await store.create_connector(connectors._sealed(blank, Values(files={"../x": b"x"})))

    read_store(box.home, plant)
    key = box.new_key("--connector", name)
    body = _run_marker(box, key)
    _refused(body)
    assert record(box, key, body["trace_id"])["connectors"] == []
    assert f"cannot write secret '{name}/../x'" in box.log
    cli(box.home, "connectors", "delete", name)
