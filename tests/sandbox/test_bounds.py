"""/tmp, /dev/shm and an ephemeral home are bounded on both launch paths: a server that is
root (sandboxes prepared ahead, as the sandbox uid, in cgroups) and one that is not (no
cgroups, memory bounded only by RLIMIT_DATA, which tmpfs pages escape): writing past a
bound fails with ENOSPC inside the sandbox."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from baponi_core._sandbox import agent, gate
from tests.harness import run_probe
from tests.sandbox.fill import LIMITS

NOBODY = 65534
SCRIPT = Path(__file__).with_name("fill.py")


def fill(base: Path, *become: str) -> dict[str, Any]:
    report: dict[str, Any] = run_probe(SCRIPT, base, *become)
    return report


def scratch(request: pytest.FixtureRequest, owner: int) -> Path:
    """A base directory for the runtime, owned by ``owner``, with the C programs already
    built in its cache (as the server would find them)."""
    base = Path(tempfile.mkdtemp(prefix="baponi-bounds-"))  # pytest's are root's alone
    request.addfinalizer(lambda: shutil.rmtree(base))
    base.chmod(0o755)
    cache = base / "cache" / "baponi"
    cache.mkdir(parents=True)
    for built in (agent.binary(), gate.binary()):
        shutil.copy(built, cache / built.name)
    for path in [base, *base.rglob("*")]:
        os.chown(path, owner, owner)
    return base


@pytest.mark.parametrize("root", [True, False], ids=["root", "unprivileged"])
def test_writes_past_each_tmpfs_bound_fail_with_enospc(
    request: pytest.FixtureRequest, root: bool
) -> None:
    if root:
        report = fill(scratch(request, 0))
    else:
        become = ("setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups")
        report = fill(scratch(request, NOBODY), *become)
    assert report["root"] is root
    bounds = {
        "/tmp": LIMITS.tmp_bytes,
        "/dev/shm": LIMITS.shm_bytes,
        "/home/baponi": LIMITS.home_bytes,
    }
    for path, bound in bounds.items():
        error, written = report["filled"][path]
        assert error == "ENOSPC", (path, report)
        assert bound // 2 < written <= bound, (path, written, bound)
