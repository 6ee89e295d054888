"""The official ``opensandbox`` SDK 1.1.1, unmodified, against a real ``baponi serve``:
sandboxes created from a runtime, commands in the foreground and the background,
pause and resume, renew, kill, expiry, the state after a restart, and organisations
kept apart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxException
from opensandbox.models.execd import RunCommandOpts

from tests.harness import (
    Server,
    cli,
    org_key,
    run_cli,
    start_server,
    stop_server,
    unique,
    wait_until,
)
from tests.opensandbox.clients import RUNTIME, lifecycle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def osb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("osb") / "home", "--sandboxes-per-org", "4")
    yield server
    stop_server(server)


def config(server: Server, key: str | None = None) -> ConnectionConfigSync:
    return ConnectionConfigSync(
        domain=f"{server.url}/opensandbox",
        api_key=key or server.key,
        request_timeout=timedelta(seconds=30),
    )


@pytest.fixture()
def sandbox(osb_server: Server) -> Iterator[SandboxSync]:
    box = SandboxSync.create(
        RUNTIME, connection_config=config(osb_server), metadata={"t": unique()}
    )
    yield box
    with contextlib.suppress(SandboxException):  # a test may have ended it
        box.kill()


def test_a_foreground_command_streams_its_output_and_exit_code(sandbox: SandboxSync) -> None:
    done = sandbox.commands.run("echo out; echo err >&2; printf 'é'; exit 0")
    assert "".join(m.text for m in done.logs.stdout) == "out\né"
    assert "".join(m.text for m in done.logs.stderr) == "err\n"
    assert done.exit_code == 0 and done.error is None
    failed = sandbox.commands.run("exit 7")
    assert failed.exit_code == 7 and failed.error is not None
    assert failed.error.name == "CommandExecError"


def test_the_workspace_and_environment_persist_between_commands(
    osb_server: Server,
) -> None:
    box = SandboxSync.create(
        RUNTIME, connection_config=config(osb_server), env={"GREETING": "hi there"}
    )
    try:
        box.commands.run("echo kept > ~/state.txt; mkdir -p /tmp/w")
        done = box.commands.run(
            'cat state.txt; echo "$GREETING $EXTRA"; pwd',
            opts=RunCommandOpts(working_directory="/home/baponi", envs={"EXTRA": "x"}),
        )
        assert "".join(m.text for m in done.logs.stdout) == "kept\nhi there x\n/home/baponi\n"
    finally:
        box.kill()


def test_a_background_command_has_a_status_logs_and_an_interrupt(sandbox: SandboxSync) -> None:
    started = sandbox.commands.run(
        "for i in 1 2 3; do echo line$i; sleep 0.2; done; sleep 30",
        opts=RunCommandOpts(background=True),
    )
    command_id = started.id
    assert command_id
    status = sandbox.commands.get_command_status(command_id)
    assert status.running is True and status.exit_code is None
    wait_until(
        lambda: "line3" in sandbox.commands.get_background_command_logs(command_id).content,
        within=10,
    )
    logs = sandbox.commands.get_background_command_logs(command_id)
    assert logs.content == "line1\nline2\nline3\n" and logs.cursor == len(logs.content)
    rest = sandbox.commands.get_background_command_logs(command_id, cursor=len("line1\n"))
    assert rest.content == "line2\nline3\n"
    sandbox.commands.interrupt(command_id)
    status = sandbox.commands.get_command_status(command_id)
    assert status.running is False and status.exit_code == -1  # a signal ended it


def test_a_command_past_its_timeout_is_killed(sandbox: SandboxSync) -> None:
    began = time.monotonic()
    done = sandbox.commands.run(
        "echo begun; sleep 30", opts=RunCommandOpts(timeout=timedelta(seconds=1))
    )
    assert time.monotonic() - began < 10
    assert "".join(m.text for m in done.logs.stdout) == "begun\n"
    assert done.exit_code == -1


def test_pause_stops_every_process_and_resume_continues_it(
    osb_server: Server, sandbox: SandboxSync
) -> None:
    sandbox.commands.run(
        "n=0; while :; do n=$((n+1)); echo $n > /tmp/count; sleep 0.05; done",
        opts=RunCommandOpts(background=True),
    )
    wait_until(lambda: _count(sandbox) > 3, within=10)
    before = _count(sandbox)
    sandbox.pause()
    assert sandbox.get_info().status.state == "Paused"
    time.sleep(1.5)  # 30 increments, had it run
    sandbox = SandboxSync.resume(sandbox.id, connection_config=config(osb_server))
    assert sandbox.get_info().status.state == "Running"
    after = _count(sandbox)
    assert before <= after <= before + 8  # it went on from where it was
    wait_until(lambda: _count(sandbox) > after + 5, within=10)  # and it runs again


def _count(sandbox: SandboxSync) -> int:
    text = "".join(m.text for m in sandbox.commands.run("cat /tmp/count").logs.stdout)
    return int(text or 0)


def test_renew_moves_the_expiry_and_an_expired_sandbox_ends(osb_server: Server) -> None:
    box = SandboxSync.create(
        RUNTIME, connection_config=config(osb_server), timeout=timedelta(seconds=60)
    )
    try:
        later = datetime.now(UTC) + timedelta(minutes=30)
        box.renew(timedelta(minutes=30))
        expires = box.get_info().expires_at
        assert expires is not None and abs((expires - later).total_seconds()) < 30
    finally:
        box.kill()
    short = SandboxSync.create(
        RUNTIME, connection_config=config(osb_server), timeout=timedelta(seconds=1)
    )
    wait_until(lambda: short.get_info().status.state == "Terminated", within=10)
    assert short.get_info().status.reason == "EXPIRED"


def test_kill_ends_the_sandbox_and_its_processes(osb_server: Server, sandbox: SandboxSync) -> None:
    marker = unique("m")
    sandbox.commands.run(f"exec -a {marker} sleep 300", opts=RunCommandOpts(background=True))
    wait_until(lambda: _running(marker), within=10)
    sandbox.kill()
    info = sandbox.get_info()
    assert info.status.state == "Terminated" and info.status.reason == "DELETED"
    assert not _running(marker)
    with lifecycle(osb_server) as client:
        assert client.delete(f"/sandboxes/{sandbox.id}").status_code == 409  # ended already


def _running(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(marker.encode()):
                return True
        except OSError:
            continue
    return False


def test_code_that_kills_everything_it_can_leaves_the_sandbox_usable(sandbox: SandboxSync) -> None:
    sandbox.commands.run("kill -9 -1; true")
    done = sandbox.commands.run("echo still here")
    assert "".join(m.text for m in done.logs.stdout) == "still here\n"
    assert sandbox.get_info().status.state == "Running"


def test_list_filters_by_state_and_metadata(osb_server: Server) -> None:
    tag = unique()
    boxes = [
        SandboxSync.create(
            RUNTIME, connection_config=config(osb_server), metadata={"tag": tag, "n": str(i)}
        )
        for i in range(2)
    ]
    try:
        boxes[1].kill()
        with lifecycle(osb_server) as client:
            found = client.get("/sandboxes", params={"metadata": f"tag={tag}"}).json()
            assert {s["id"] for s in found["items"]} == {b.id for b in boxes}
            assert found["pagination"]["totalItems"] == 2
            running = client.get(
                "/sandboxes", params={"metadata": f"tag={tag}", "state": "Running"}
            ).json()
            assert [s["id"] for s in running["items"]] == [boxes[0].id]
            paged = client.get(
                "/sandboxes", params={"metadata": f"tag={tag}", "pageSize": 1, "page": 2}
            ).json()
            assert len(paged["items"]) == 1 and paged["pagination"]["hasNextPage"] is False
    finally:
        boxes[0].kill()


def test_another_organisation_sees_nothing_of_a_sandbox(
    osb_server: Server, sandbox: SandboxSync
) -> None:
    other = org_key(osb_server, unique("org"))
    with lifecycle(osb_server, other) as client:
        for response in (
            client.get(f"/sandboxes/{sandbox.id}"),
            client.delete(f"/sandboxes/{sandbox.id}"),
            client.post(f"/sandboxes/{sandbox.id}/pause"),
            client.get(f"/sandboxes/{sandbox.id}/endpoints/44772"),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["code"] == "NOT_FOUND"
        assert client.get("/sandboxes").json()["items"] == []
    with lifecycle(osb_server) as client:
        endpoint = client.get(f"/sandboxes/{sandbox.id}/endpoints/44772").json()
    url = f"http://{endpoint['endpoint']}/ping"
    assert httpx.get(url, headers=endpoint["headers"]).status_code == 200
    for headers in ({}, {"X-EXECD-ACCESS-TOKEN": "wrong"}):
        refused = httpx.get(url, headers=headers)
        assert refused.status_code == 401
        assert refused.json() == {
            "error": "Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN"
        }


def test_bad_requests_get_the_error_body(osb_server: Server) -> None:
    with lifecycle(osb_server) as client:
        unknown = client.post("/sandboxes", json={"image": {"uri": "no-such-runtime"}})
        assert unknown.status_code == 400 and "no-such-runtime" in unknown.json()["message"]
        bad = client.post(
            "/sandboxes", json={"image": {"uri": RUNTIME}, "resourceLimits": {"cpu": "lots"}}
        )
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST_BODY"
        assert client.get("/sandboxes/sbx_nothing").status_code == 404
        for page in ("0", "x", "²"):  # "²" is a digit to str.isdigit, not to int()
            listed = client.get("/sandboxes", params={"page": page})
            assert listed.status_code == 400 and "page" in listed.json()["message"], page
    with httpx.Client(base_url=f"{osb_server.url}/opensandbox/v1") as anonymous:
        assert anonymous.get("/sandboxes").status_code == 401


def test_the_live_sandboxes_of_an_organisation_are_bounded(osb_server: Server) -> None:
    key = org_key(osb_server, unique("org"))
    boxes = [
        SandboxSync.create(RUNTIME, connection_config=config(osb_server, key)) for _ in range(4)
    ]
    try:
        with lifecycle(osb_server, key) as client:
            refused = client.post("/sandboxes", json={"image": {"uri": RUNTIME}})
        assert refused.status_code == 429 and refused.headers["retry-after"]
    finally:
        for box in boxes:
            box.kill()


def test_after_a_restart_a_sandbox_reads_terminated(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        box = SandboxSync.create(RUNTIME, connection_config=config(server))
        sandbox_id = box.id
    finally:
        stop_server(server)
    again = start_server(home)
    try:
        with lifecycle(again) as client:
            status = client.get(f"/sandboxes/{sandbox_id}").json()["status"]
        assert status["state"] == "Terminated" and status["reason"] == "SERVER_STOPPED"
    finally:
        stop_server(again)


def test_operators_list_and_kill_sandboxes(osb_server: Server, sandbox: SandboxSync) -> None:
    listed = cli(osb_server.home, "sandboxes", "list")
    line = next(line for line in listed.splitlines() if line.startswith(sandbox.id))
    assert "Running" in line and f"runtime={RUNTIME}" in line
    said = cli(osb_server.home, "sandboxes", "kill", sandbox.id)
    assert sandbox.id in said
    wait_until(lambda: sandbox.get_info().status.state == "Terminated", within=10)
    assert sandbox.get_info().status.reason == "KILLED"
    assert sandbox.id not in cli(osb_server.home, "sandboxes", "list")
    assert sandbox.id in cli(osb_server.home, "sandboxes", "list", "--all")
    refused = run_cli(osb_server.home, "sandboxes", "kill", sandbox.id)
    assert refused.returncode != 0 and "no live sandbox" in refused.stderr


def test_an_idle_sandbox_ends_and_a_busy_one_does_not(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", "--sandbox-idle-timeout", "1")
    try:
        idle = SandboxSync.create(RUNTIME, connection_config=config(server))
        busy = SandboxSync.create(RUNTIME, connection_config=config(server))
        busy.commands.run("sleep 4", opts=RunCommandOpts(background=True))
        wait_until(lambda: idle.get_info().status.state == "Terminated", within=10)
        assert idle.get_info().status.reason == "IDLE"
        assert busy.get_info().status.state == "Running"
        busy.kill()
    finally:
        stop_server(server)


def test_paused_time_does_not_count_against_the_expiry(osb_server: Server) -> None:
    box = SandboxSync.create(
        RUNTIME, connection_config=config(osb_server), timeout=timedelta(seconds=3)
    )
    try:
        first = box.get_info().expires_at
        box.pause()
        time.sleep(4)  # past its expiry, paused
        assert box.get_info().status.state == "Paused"
        box = SandboxSync.resume(box.id, connection_config=config(osb_server))
        later = box.get_info().expires_at
        assert first is not None and later is not None
        assert (later - first).total_seconds() >= 3.5  # the paused time was added
    finally:
        box.kill()


def test_the_operator_can_let_paused_time_count(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", "--sandbox-paused-time-counts")
    try:
        box = SandboxSync.create(
            RUNTIME, connection_config=config(server), timeout=timedelta(seconds=2)
        )
        box.pause()
        wait_until(lambda: box.get_info().status.state == "Terminated", within=10)
        assert box.get_info().status.reason == "EXPIRED"
    finally:
        stop_server(server)
