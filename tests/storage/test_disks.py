"""The mounts of thread homes' filesystems (:mod:`baponi_core._storage.disks`), driven
directly in a mount namespace of their own so that nothing shows on the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


def test_a_home_asked_for_while_it_is_unmounted_is_mounted_again(tmp_path: Path) -> None:
    script = Path(__file__).with_name("disks_race.py")
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr
    # The second user got the home mounted, with its file: never the empty directory
    # under it, as a holder of a disk retired meanwhile would have.
    assert json.loads(done.stdout) == {
        "mounted": True,
        "file": "kept",
        "mounted_after": True,
        "mounted_at_the_end": False,
    }
