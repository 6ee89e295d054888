"""The two C programs of the sandbox runtime (the agent, the gate), each compiled from its
source next to this module on first use, statically linked, and cached per version of
that source (``scripts/setup.sh`` builds them ahead)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def cache() -> Path:
    """Where built programs are kept: one per version of their source."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "baponi"


def program(name: str, source: str, where: Path | None = None) -> Path:
    """``source`` (a file of this package) built as ``<name>-<hash of the source>``."""
    path = HERE / source
    text = path.read_bytes()
    target = (where or cache()) / f"{name}-{hashlib.sha256(text).hexdigest()[:16]}"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError(
            f"the sandbox's {name} must be compiled once and no C compiler was found: "
            "apt-get install gcc libc6-dev (scripts/setup.sh does)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / name
        done = subprocess.run(
            [compiler, "-O2", "-static", "-s", "-o", str(built), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(f"could not compile the sandbox's {name}: {done.stderr.strip()}")
        built.chmod(0o755)
        built.replace(target)  # atomic: servers starting together never see half a file
    return target
