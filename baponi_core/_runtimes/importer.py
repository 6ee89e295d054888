"""``baponi runtimes import``: an image (or the host) made a runtime generation, staged in
the runtimes directory and moved into place only once complete, so a failed import
leaves nothing behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from baponi_core._errors import RuntimeRefused
from baponi_core._limits import LANGUAGES
from baponi_core._runtimes import oci
from baponi_core._runtimes.description import Description
from baponi_core._runtimes.inroot import executable
from baponi_core._runtimes.registry import Runtimes
from baponi_core._runtimes.scrub import DIR_FLAGS, make_mount_points, make_workdir, scrub
from baponi_core._sandbox.image import HOST_INTERPRETERS, ROOTFS
from baponi_core._sandbox.rootfs import HIDING, HOME, HOST_PATH

HOST_SOURCE = "host:"
LABEL = "org.baponi.interpreter."  # + language: the interpreter's path, or a JSON argv
# Where an image without labels is looked into, per language (resolved inside its root).
DETECTED = {"bash": "/bin/bash", "node": "/usr/bin/node", "python": "/usr/bin/python3"}


def import_runtime(runtimes: Runtimes, name: str, source: str, replace: bool) -> Description:
    """Make ``source`` the runtime ``name`` (``host:`` for the host's /usr); raises
    RuntimeRefused for an image that cannot be one, Conflict for a name taken without
    ``replace``."""
    if not replace:  # before the long part; install checks again
        runtimes.check_free(name)
    with runtimes.staging() as staging:
        generation = staging / "generation"
        generation.mkdir(mode=0o700)
        if source == HOST_SOURCE:
            description = _host()
        else:
            description = _image(source, staging, generation / ROOTFS)
        description.write(generation)
        runtimes.install(name, generation, replace)
    return description


def _host() -> Description:
    """The host's /usr, read-only, /usr/local hidden: the interpreters it has."""
    found = {lang: list(argv) for lang, argv in HOST_INTERPRETERS if os.access(argv[0], os.X_OK)}
    return Description(
        source=HOST_SOURCE,
        created_at=time.time(),
        host=True,
        env={"PATH": HOST_PATH},
        interpreters=found,
    )


def _image(source: str, staging: Path, rootfs: Path) -> Description:
    layout, bundle = staging / "layout", staging / "bundle"
    oci.copy(source, layout, staging)
    image = oci.config(layout)
    env = image.environment()
    os.rename(oci.unpack(layout, bundle, staging), rootfs)
    size = scrub(rootfs)
    make_mount_points(rootfs, HIDING)
    workdir = image.config.working_dir or HOME
    make_workdir(rootfs, workdir)
    return Description(
        source=source,
        created_at=time.time(),
        env=env,
        workdir=workdir,
        interpreters=_interpreters(rootfs, image.config.labels),
        entrypoint=image.config.entrypoint,
        size=size,
    )


def _interpreters(rootfs: Path, labels: dict[str, str]) -> dict[str, list[str]]:
    """Each language's argv prefix: from the image's labels, else where Debian puts it."""
    root = os.open(rootfs, DIR_FLAGS)
    try:
        found: dict[str, list[str]] = {}
        for key, value in labels.items():
            if key.startswith(LABEL):
                language = key.removeprefix(LABEL)
                if language not in LANGUAGES:
                    raise RuntimeRefused(f"label {key}: unknown language {language!r}")
                found[language] = _labelled(root, key, value)
        for language, path in DETECTED.items():
            if language not in found and executable(root, path):
                found[language] = [path]
        if not found:
            raise RuntimeRefused(
                f"the image has no interpreter: none of {', '.join(DETECTED.values())}, and no "
                f"{LABEL}<language> label"
            )
        return found
    finally:
        os.close(root)


def _labelled(root: int, key: str, value: str) -> list[str]:
    argv: object = value
    if value.lstrip().startswith("["):
        try:
            argv = json.loads(value)
        except ValueError:
            raise RuntimeRefused(f"label {key}: not a JSON array of strings") from None
    if isinstance(argv, str):
        argv = [argv]
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
    ):
        raise RuntimeRefused(f"label {key}: expected a path or a JSON array of strings")
    if not argv[0].startswith("/") or not executable(root, argv[0]):
        raise RuntimeRefused(f"label {key}: {argv[0]} is not an executable file in the image")
    return argv
