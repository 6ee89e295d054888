"""The examples of embedding Baponi as a library (docs/library.md), each run as a user runs
it, on a home of its own: no server of the session's is involved."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.examples.test_examples import run_example
from tests.harness import ROOT

TRACE = r"trc_[\w-]+"


def env_for(home: Path) -> dict[str, str]:
    # PYTHONPATH: this tree's packages, as the tests import them.
    return {"BAPONI_HOME": str(home), "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_embedded_streaming(tmp_path: Path) -> None:
    stdout, stderr = run_example("embedded_streaming", env_for(tmp_path))
    assert stderr == ""
    out = stdout.splitlines()
    assert re.fullmatch(rf"\[seq 1\] {TRACE} is running", out[0])
    assert out[1:5] == ["[stdout] 3...", "[stdout] 2...", "[stdout] 1...", "[stderr] liftoff"]
    assert re.fullmatch(r"\[seq \d+\] ended: success, exit code 0", out[5])
    assert out[6:] == [
        "background run: 'launched', success=True",
        "in the thread's home: b'launched\\n'",
    ]


@pytest.mark.slow
def test_mounted_rest(tmp_path: Path) -> None:
    stdout, _ = run_example("mounted_rest", env_for(tmp_path))
    assert stdout.splitlines() == [
        "the application's own route",
        "execute: 42",
        "upload URL under the prefix: True",
        "the sandbox read: uploaded through a signed URL",
        "downloaded: written in the sandbox",
        "a wrong key: AuthenticationError",
    ]


@pytest.mark.slow
def test_own_mcp_server(tmp_path: Path) -> None:
    stdout, _ = run_example("own_mcp_server", env_for(tmp_path))
    out = stdout.splitlines()
    assert out[:2] == ["tools: files_download, sandbox_execute, shout", "shout: HELLO"]
    assert re.fullmatch(
        rf"sandbox_execute: \{{'success': True, 'stdout': 'wrote it\\n', 'stderr': '', "
        rf"'exit_code': 0, 'error': None, 'trace_id': '{TRACE}'\}}",
        out[2],
    )
    assert out[3:] == ["files_download: hi from the sandbox"]
