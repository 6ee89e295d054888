"""The default runtime image that scripts/setup.sh builds: where it is, what its OCI
config says, and a way to run a command in its root under bubblewrap."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import default_image

REPO = Path(__file__).resolve().parents[2]
PINS = REPO / "scripts" / "runtime"
HOME = "/home/baponi"
SANDBOX_UID = "1000"


def default_layout() -> Path:
    """The layout set-up keeps for this checkout's pinned inputs. Set-up has just built it
    for the suite it runs (``BAPONI_TEST_IMAGE``), so its absence fails there rather than
    skipping."""
    layout = default_image()
    if layout is None:
        pytest.skip("no default runtime image: scripts/setup.sh builds it")
    return layout


def blob(layout: Path, descriptor: dict[str, Any]) -> Path:
    algorithm, digest = descriptor["digest"].split(":")
    return layout / "blobs" / algorithm / digest


def manifest(layout: Path) -> dict[str, Any]:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    result: dict[str, Any] = json.loads(blob(layout, entry).read_text())
    return result


def image_config(layout: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(blob(layout, manifest(layout)["config"]).read_text())
    return result


def unpack(layout: Path, bundle: Path) -> Path:
    """The image's root filesystem, unpacked by umoci as an unprivileged runtime would."""
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
        capture_output=True,
        check=True,
        timeout=600,
    )
    return bundle / "rootfs"


def run_in_image(
    root: Path, config: dict[str, Any], home: Path, *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``argv`` in ``root`` (read-only) as the sandbox user with the image's Env and
    WorkingDir, ``home`` as its home, and no network: every namespace of its own."""
    command = ["bwrap", "--ro-bind", str(root), "/", "--proc", "/proc", "--dev", "/dev"]
    command += ["--tmpfs", "/tmp", "--bind", str(home), HOME, "--unshare-all"]
    command += ["--die-with-parent", "--new-session", "--uid", SANDBOX_UID, "--gid", SANDBOX_UID]
    command += ["--chdir", config["config"]["WorkingDir"], "--clearenv", "--setenv", "HOME", HOME]
    for variable in config["config"]["Env"]:
        name, value = variable.split("=", 1)
        command += ["--setenv", name, value]
    return subprocess.run(
        [*command, "--", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
