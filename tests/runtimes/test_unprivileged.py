"""An image runtime on a server that is not root: its sandboxes run as the server's own
uid and bwrap binds the image's root by its path."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from baponi_core._sandbox import agent
from tests.harness import import_runtime, run_probe
from tests.runtimes.images import write_layout
from tests.runtimes.test_sandboxes import marked

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


def test_an_image_runtime_without_root(request: pytest.FixtureRequest) -> None:
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="baponi-unprivileged-"))  # pytest's are root's alone
    request.addfinalizer(lambda: shutil.rmtree(base))
    base.chmod(0o755)
    import_runtime(base / "runtimes", "bb", str(write_layout(marked("solo"), base / "layout")))
    cache = base / "cache" / "baponi"  # the agent already built, as the server would find it
    for path in (base / "shared", cache):
        path.mkdir(parents=True)
    built = agent.binary()
    shutil.copy(built, cache / built.name)
    for path in (base, base / "shared", base / "cache", cache, cache / built.name):
        os.chown(path, nobody, nobody)
    become = ["setpriv", "--reuid", str(nobody), "--regid", str(nobody), "--clear-groups"]
    report = run_probe(Path(__file__).with_name("unprivileged.py"), base, *become)
    assert report == {"code": 0, "out": "solo\nenv-solo\n/work/here\n1000\nno-python\n"}
