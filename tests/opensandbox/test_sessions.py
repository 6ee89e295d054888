"""execd's bash sessions through the official SDK 1.1.1 against a real ``baponi serve``:
the working directory and exported environment persist between runs, a run's own
directory, a timeout, an unknown session."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxException
from opensandbox.models.execd import Execution

from tests.harness import Server
from tests.opensandbox.execd import execd_client, sandbox_of, serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def osb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("sessions") / "home") as server:
        yield server


@pytest.fixture()
def box(osb_server: Server) -> Iterator[SandboxSync]:
    with sandbox_of(osb_server) as sandbox:
        yield sandbox


def stdout(done: Execution) -> str:
    return "".join(m.text for m in done.logs.stdout)


def test_a_session_keeps_its_directory_and_exports_between_runs(box: SandboxSync) -> None:
    session = box.commands.create_session()
    first = box.commands.run_in_session(
        session, "mkdir -p /tmp/work && cd /tmp/work && export GREETING='hi there' PLAIN=1"
    )
    assert first.exit_code == 0
    done = box.commands.run_in_session(session, 'pwd; echo "$GREETING|$PLAIN"')
    assert stdout(done) == "/tmp/work\nhi there|1\n"
    box.commands.run_in_session(session, "unset PLAIN; cd /")
    done = box.commands.run_in_session(session, 'pwd; echo "[${PLAIN-unset}]"')
    assert stdout(done) == "/\n[unset]\n"
    # Another session, and a plain command, see none of it.
    other = box.commands.create_session()
    assert stdout(box.commands.run_in_session(other, 'pwd; echo "[$GREETING]"')) == (
        "/home/baponi\n[]\n"
    )
    assert stdout(box.commands.run('echo "[$GREETING]"')) == "[]\n"


def test_a_run_that_exits_keeps_its_state_and_reports_its_status(box: SandboxSync) -> None:
    session = box.commands.create_session(working_directory="/tmp/start here")
    done = box.commands.run_in_session(session, "pwd; cd /usr; export LEFT=yes; exit 3")
    assert stdout(done) == "/tmp/start here\n"
    assert done.exit_code == 3 and done.error is not None
    done = box.commands.run_in_session(session, 'pwd; echo "$LEFT" "$1"')
    assert stdout(done) == "/usr\nyes \n"  # no positional argument of the wrapper leaks
    assert done.exit_code == 0


def test_a_run_in_a_directory_of_its_own_and_past_its_timeout(box: SandboxSync) -> None:
    session = box.commands.create_session(working_directory="~/proj")  # made, in the home
    assert stdout(box.commands.run_in_session(session, "pwd")) == "/home/baponi/proj\n"
    done = box.commands.run_in_session(session, "pwd", working_directory="$TMPDIR")
    assert stdout(done) == "/tmp\n"
    began = time.monotonic()
    done = box.commands.run_in_session(
        session, "cd /usr; echo begun; sleep 30", timeout=timedelta(seconds=1)
    )
    assert time.monotonic() - began < 10
    assert stdout(done) == "begun\n" and done.exit_code == -1
    # A killed run saves nothing: the directory of the run before it holds.
    assert stdout(box.commands.run_in_session(session, "pwd")) == "/tmp\n"


def test_an_unknown_or_deleted_session_is_context_not_found(box: SandboxSync) -> None:
    session = box.commands.create_session()
    box.commands.delete_session(session)
    with execd_client(box) as execd:
        for response in (
            execd.post(f"/session/{session}/run", json={"command": "true"}),
            execd.delete(f"/session/{session}"),
            execd.post("/session/nosuch/run", json={"command": "true"}),
        ):
            assert response.status_code == 404
            assert response.json()["code"] == "CONTEXT_NOT_FOUND"
        assert execd.post("/session", content=b"").status_code == 200  # an empty body
        missing = execd.post(f"/session/{session}/run", json={})
        assert missing.status_code == 400 and missing.json()["code"] == "INVALID_REQUEST_BODY"
    with pytest.raises(SandboxException):
        box.commands.run_in_session(session, "true")


def test_one_run_at_a_time_per_session(box: SandboxSync) -> None:
    session = box.commands.create_session()
    with execd_client(box) as execd:
        run = {"command": "echo started; read -t 30 line < /tmp/never || true"}
        box.commands.run("mkfifo /tmp/never")
        with execd.stream("POST", f"/session/{session}/run", json=run) as first:
            lines = (line for line in first.iter_lines() if line)
            assert json.loads(next(lines))["type"] == "init"
            assert json.loads(next(lines))["text"] == "started\n"
            busy = execd.post(f"/session/{session}/run", json={"command": "true"})
            assert busy.status_code == 500 and busy.json()["code"] == "RUNTIME_ERROR"
            box.commands.run("echo go > /tmp/never")
            assert json.loads(list(lines)[-1])["type"] == "execution_complete"
    assert box.commands.run_in_session(session, "true").exit_code == 0
