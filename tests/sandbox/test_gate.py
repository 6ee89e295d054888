"""The gate bwrap is started through (gate.c): it executes its program in its own place
once the server says so, and never when the server does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

from baponi_core._sandbox import gate
from baponi_core._sandbox.gate import Gate


def started(opened: bool, marker: Path) -> tuple[int, str, int]:
    """The gate's exit status, what its program printed, and the gate's pid."""
    held = Gate()
    try:
        argv = held.wrap(gate.binary(), ["/bin/sh", "-c", f'echo $$; touch "{marker}"'])
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, pass_fds=[held.held], text=True)
        if opened:
            held.open()
    finally:
        held.close()  # not opened by then: the gate reads the pipe's end
    out, _ = process.communicate(timeout=10)
    return process.returncode, out, process.pid


def test_the_program_runs_in_the_gate_s_place_once_opened(tmp_path: Path) -> None:
    status, out, pid = started(True, tmp_path / "ran")
    assert (status, out) == (0, f"{pid}\n")  # exec'd: the same process
    assert (tmp_path / "ran").exists()


def test_a_gate_never_opened_starts_nothing(tmp_path: Path) -> None:
    status, out, _ = started(False, tmp_path / "ran")
    assert (status, out) == (3, "")
    assert not (tmp_path / "ran").exists()


def test_a_malformed_descriptor_starts_nothing(tmp_path: Path) -> None:
    for fd in ("", "x", "3x", "-1"):
        done = subprocess.run(
            [str(gate.binary()), fd, "/usr/bin/touch", str(tmp_path / "ran")],
            check=False,
            timeout=10,
        )
        assert done.returncode == 2, fd
    assert not (tmp_path / "ran").exists()
