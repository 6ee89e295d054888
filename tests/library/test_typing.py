"""The public API is typed for its users: a program using only it (typed_program.py)
passes ``mypy --strict``, which also holds it to what the packages export (``__all__``:
strict forbids implicit re-exports); and the check does bite on a program that goes
wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

PROGRAM = Path(__file__).with_name("typed_program.py")


def mypy(program: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``program`` as a user runs it: none of this project's
    configuration, our packages found as installed ones are (their own errors, like an
    installed package's, are not the user's)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file=",
            "--follow-imports=silent",
            "--cache-dir",
            str(cache),
            str(program),
        ],
        cwd=program.parent,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_user_program_passes_mypy_strict(tmp_path: Path) -> None:
    done = mypy(PROGRAM, tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_check_bites(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "import baponi_core\n"
        "from baponi_core import Core\n"  # internal: not exported
        "async def f(session: baponi_core.Session) -> int:\n"
        "    return await session.execute('print(1)', timeout='10')\n"
    )
    done = mypy(wrong, tmp_path / "cache")
    assert done.returncode == 1
    assert 'Module "baponi_core" has no attribute "Core"' in done.stdout
    assert 'Incompatible return value type (got "SandboxResult", expected "int")' in done.stdout
    assert 'Argument "timeout" to "execute" of "Session" has incompatible type "str"' in done.stdout
