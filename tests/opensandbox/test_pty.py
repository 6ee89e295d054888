"""execd's PTY sessions over a raw WebSocket (the SDK has no client for them) against a
real ``baponi serve``: a terminal made inside the sandbox, its size, a Ctrl-C by control
frame, replay from an offset, one client at a time and takeover, pipe mode, the end.

What a terminal echoes of typed input is in its output too, so each expected text is
computed by the shell (``$((6*7))`` typed, ``42`` awaited), never typed as it is."""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opensandbox import SandboxSync
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.harness import Server, wait_until
from tests.opensandbox.execd import execd_client, execd_of, sandbox_of, serving

pytestmark = pytest.mark.slow
WAIT_S = 15.0


@pytest.fixture(scope="module")
def osb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("pty") / "home") as server:
        yield server


@pytest.fixture(scope="module")
def box(osb_server: Server) -> Iterator[SandboxSync]:
    with sandbox_of(osb_server) as sandbox:
        yield sandbox


@pytest.fixture()
def execd(box: SandboxSync) -> Iterator[httpx.Client]:
    with execd_client(box) as client:
        yield client


def new_pty(execd: httpx.Client, **body: str) -> str:
    created = execd.post("/pty", json=body)
    assert created.status_code == 201, created.text
    session_id: str = created.json()["session_id"]
    return session_id


class Term:
    """One client of a PTY session: its frames read, its output gathered."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = bytearray()  # every stdout, stderr and replay byte, in order
        self.stderr = bytearray()
        self.replays: list[tuple[int, bytes]] = []
        self.controls: list[dict[str, Any]] = []
        self.connected: dict[str, Any] = {}

    def frame(self, within: float = WAIT_S) -> bytes | dict[str, Any]:
        message = self.ws.recv(timeout=within)
        if isinstance(message, str):
            control: dict[str, Any] = json.loads(message)
            self.controls.append(control)
            return control
        kind, data = message[0], message[1:]
        if kind == 0x03:
            (offset,) = struct.unpack(">Q", data[:8])
            self.replays.append((offset, data[8:]))
            self.output += data[8:]
        else:
            assert kind in (0x01, 0x02), message[:1]
            self.output += data
            if kind == 0x02:
                self.stderr += data
        return message

    def until(self, pattern: str, within: float = WAIT_S) -> re.Match[str]:
        deadline = time.monotonic() + within
        while not (found := re.search(pattern, self.output.decode(errors="replace"))):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {bytes(self.output)!r}"
            self.frame(left)
        return found

    def control_of(self, kind: str, within: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            for control in self.controls:
                if control["type"] == kind:
                    self.controls.remove(control)
                    return control
            self.frame(deadline - time.monotonic())

    def type(self, text: str) -> None:
        self.ws.send(b"\x00" + text.encode())

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))


def connect_to(box: SandboxSync, session_id: str, query: str = "", **options: Any) -> Any:
    """A WebSocket to the session, with the sandbox's token unless ``options`` say."""
    where, headers = execd_of(box)
    url = f"ws://{where}/pty/{session_id}/ws{'?' + query if query else ''}"
    options = {"additional_headers": headers, **options}
    return connect(url, proxy=None, open_timeout=WAIT_S, **options)


@contextlib.contextmanager
def attached(box: SandboxSync, session_id: str, query: str = "") -> Iterator[Term]:
    with connect_to(box, session_id, query) as ws:
        term = Term(ws)
        term.connected = term.control_of("connected")
        assert term.connected["session_id"] == session_id
        yield term


def test_a_terminal_inside_the_sandbox_echoes_says_its_tty_and_ends(
    box: SandboxSync, execd: httpx.Client
) -> None:
    session_id = new_pty(execd, cwd="$TMPDIR")  # a path as the files API reads it
    with attached(box, session_id) as term:
        term.type("tty; pwd; echo $((6*7))x\n")
        term.until(r"/dev/pts/\d+\r\n/tmp\r\n42x")
        term.type("exit 5\n")
        assert term.control_of("exit")["exit_code"] == 5
        with pytest.raises(ConnectionClosed) as closed:
            term.frame()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    status = execd.get(f"/pty/{session_id}").json()
    assert status["running"] is False and status["output_offset"] > 0
    with attached(box, session_id) as again:  # an ended session: what it said, its end
        assert again.control_of("exit")["exit_code"] == 5
        assert len(again.output) == status["output_offset"] and b"42x" in again.output


def test_a_resize_is_what_stty_reads_and_sigint_reaches_the_foreground(
    box: SandboxSync, execd: httpx.Client
) -> None:
    session_id = new_pty(execd)
    with attached(box, session_id) as term:
        term.type("stty size; echo $((1+1))a\n")
        term.until(r"24 80\r\n2a")  # execd's default size
        term.send(type="resize", cols=123, rows=45)
        term.type("stty size; echo $((2+2))b\n")
        term.until(r"45 123\r\n4b")
        term.type(
            'bash -c \'trap "echo int-$((100+1)); exit 130" INT;'
            " echo $((20+1))r; while :; do sleep 0.1; done'\n"
        )
        term.until(r"21r")
        term.send(type="signal", signal="SIGINT")
        term.until(r"int-101")
        term.type("echo status-$?\n")
        term.until(r"status-130")
        term.send(type="ping")
        assert term.control_of("pong") == {"type": "pong"}
        term.send(type="nonsense")
        assert term.control_of("error")["code"] == "INVALID_FRAME"
    execd.delete(f"/pty/{session_id}")


def settled_offset(execd: httpx.Client, session_id: str) -> int:
    """The session's output offset once it has stopped growing (for 0.3 s)."""
    last = -1
    for _ in range(50):
        status = execd.get(f"/pty/{session_id}").json()
        assert status["running"] is True
        if status["output_offset"] == last:
            return last
        last = status["output_offset"]
        time.sleep(0.3)
    raise AssertionError(f"the output of {session_id} kept growing")


def test_output_is_replayed_from_an_offset(box: SandboxSync, execd: httpx.Client) -> None:
    session_id = new_pty(execd)
    with attached(box, session_id) as term:
        term.type("echo $((1+1))-first\n")
        term.until(r"2-first")
    end = settled_offset(execd, session_id)  # the prompt after the output comes too
    with attached(box, session_id, "since=0") as term:
        term.until(r"2-first")
        offset, everything = term.replays[0]
        assert offset == 0 and len(everything) == end
    with attached(box, session_id, "since=5") as term:
        term.until(r"2-first")
        assert term.replays[0] == (5, everything[5:])
    with attached(box, session_id, f"since={end}") as term:
        term.type("echo $((2+2))-second\n")
        term.until(r"4-second")
        assert term.replays == [] and b"first" not in term.output
    execd.delete(f"/pty/{session_id}")


def test_one_client_at_a_time_and_a_takeover_closes_the_holder_with_4001(
    box: SandboxSync, execd: httpx.Client
) -> None:
    session_id = new_pty(execd)
    with attached(box, session_id) as first:
        first.type("KEPT=$((6*7)); echo $((3+3))ready\n")
        first.until(r"6ready")
        with pytest.raises(InvalidStatus) as refused:
            connect_to(box, session_id)
        assert refused.value.response.status_code == 409
        assert json.loads(refused.value.response.body)["code"] == "ALREADY_CONNECTED"
        with attached(box, session_id, f"takeover=1&since={len(first.output)}") as second:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    first.frame()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
            second.type("echo kept-$KEPT\n")  # the same shell: its variable is there
            second.until(r"kept-42")
    execd.delete(f"/pty/{session_id}")


def test_pipe_mode_has_no_terminal_and_stderr_apart(box: SandboxSync, execd: httpx.Client) -> None:
    session_id = new_pty(execd)
    with attached(box, session_id, "pty=0") as term:
        assert term.connected["mode"] == "pipe"
        term.type("tty; echo to-err >&2; exit 3\n")
        assert term.control_of("exit")["exit_code"] == 3
        assert b"not a tty" in term.output and term.stderr == b"to-err\n"


def test_a_delete_ends_the_shell_and_its_client(box: SandboxSync, execd: httpx.Client) -> None:
    session_id = new_pty(execd, command="echo $((8*8))go; sleep 60")
    with attached(box, session_id) as term:
        term.until(r"64go")
        assert execd.delete(f"/pty/{session_id}").status_code == 200
        assert term.control_of("exit")["exit_code"] != 0
    gone = execd.get(f"/pty/{session_id}")
    assert gone.status_code == 404 and gone.json()["code"] == "CONTEXT_NOT_FOUND"


def test_the_socket_needs_the_token_and_a_session(box: SandboxSync, execd: httpx.Client) -> None:
    session_id = new_pty(execd)
    with pytest.raises(InvalidStatus) as refused:
        connect_to(box, session_id, additional_headers={})
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        connect_to(box, "nosuch")
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body)["code"] == "CONTEXT_NOT_FOUND"
    with pytest.raises(InvalidStatus) as refused:
        connect_to(box, session_id, "since=x")
    assert refused.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as refused:
        connect_to(box, session_id, "since=%C2%B2")  # "²": a digit to str.isdigit only
    assert refused.value.response.status_code == 400
    execd.delete(f"/pty/{session_id}")


def test_a_relay_killed_from_inside_ends_the_session_with_an_exit_frame(
    box: SandboxSync, execd: httpx.Client
) -> None:
    session_id = new_pty(execd)
    with attached(box, session_id) as term:
        term.type("echo $((9*9))up\n")
        term.until(r"81up")
        term.type("kill -9 $PPID\n")  # bash's parent: the relay
        assert term.control_of("exit")["exit_code"] == -1
    assert execd.get(f"/pty/{session_id}").json()["running"] is False


def test_another_sandbox_token_opens_nothing_and_a_kill_ends_the_client(
    osb_server: Server, box: SandboxSync
) -> None:
    with sandbox_of(osb_server) as other, execd_client(other) as other_execd:
        session_id = new_pty(other_execd)
        where, _ = execd_of(other)
        _, token = execd_of(box)
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://{where}/pty/{session_id}/ws", additional_headers=token, proxy=None)
        assert refused.value.response.status_code == 401
        with attached(other, session_id) as term:
            term.type("echo $((5*5))on\n")
            term.until(r"25on")
            other.kill()
            assert term.control_of("exit")["exit_code"] == -1


def test_an_attached_client_keeps_its_sandbox_from_idling(tmp_path: Path) -> None:
    server = serving(tmp_path / "home", "--sandbox-idle-timeout", "1")
    with server as osb, sandbox_of(osb) as idle, sandbox_of(osb) as used:
        with execd_client(used) as used_execd:
            session_id = new_pty(used_execd)
        with attached(used, session_id) as term:
            wait_until(lambda: idle.get_info().status.state == "Terminated", within=10)
            assert idle.get_info().status.reason == "IDLE"
            term.type("echo $((4*4))alive\n")
            term.until(r"16alive")
            assert used.get_info().status.state == "Running"
        wait_until(lambda: used.get_info().status.state == "Terminated", within=10)


def test_a_flood_of_output_reaches_its_end(box: SandboxSync, execd: httpx.Client) -> None:
    session_id = new_pty(execd)
    with attached(box, session_id) as term:
        term.type("head -c 4000000 /dev/zero | tr '\\0' a; echo; echo end-$((6*7))\n")
        term.until(r"end-42", within=60)
        # What was skipped, if the client fell behind, was announced by a replay frame.
        assert len(term.output) <= 4_000_000 + 10_000
        assert all(offset > 0 for offset, _ in term.replays)
        assert b"a" * 100_000 in term.output
    status = execd.get(f"/pty/{session_id}").json()
    assert status["output_offset"] >= 4_000_000
    execd.delete(f"/pty/{session_id}")
