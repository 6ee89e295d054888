"""Plain data given to the sandbox runtime: a sandbox's shape, its mounts, its processes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from baponi_core._net.policy import NetworkPolicy
from baponi_core._sandbox.image import HOST, Runtime
from baponi_core._sandbox.rootfs import HOME

MiB = 1 << 20
DATA = "/data"  # where volumes and storage connections appear: /data/<slug>/
RUN_DIR = "/run/baponi"  # where a process's files appear, read-only
SECRETS_DIR = "/run/secrets"  # where connector files appear, read-only: <connector>/<path>
Stream = Literal["stdout", "stderr"]  # the output streams of a process


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use, all its processes together. Memory includes /tmp, /dev/shm
    and an ephemeral home (tmpfs)."""

    memory_bytes: int = 1024 * MiB
    cpus: float = 1.0
    pids: int = 256
    tmp_bytes: int = 256 * MiB
    shm_bytes: int = 64 * MiB  # /dev/shm
    home_bytes: int = 512 * MiB  # size of the ephemeral home when no thread home is attached
    file_size_bytes: int = 1024 * MiB
    open_files: int = 1024


@dataclass(frozen=True)
class Shape:
    """What a sandbox is, whatever request it will serve: sandboxes of one shape are
    interchangeable until they are used. ``runtime`` is the root filesystem, one
    generation of it (a caller that names none gets the host runtime)."""

    limits: Limits = Limits()
    runtime: Runtime = HOST
    # none (the default): no way out of the sandbox at all
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    freezable: bool = False  # its processes can be paused (a long-lived sandbox's)


@dataclass(frozen=True)
class Command:
    """One process to start in a sandbox.

    ``argv[0]`` is looked up on the ``PATH`` of ``env``, which is all the environment the
    process gets. ``files`` are written before it starts, read-only, at
    ``/run/baponi/<name>`` (a script, say); ``secrets`` likewise at ``/run/secrets/<path>``
    (a relative path, its directories made), readable by the sandbox user alone.
    ``cpu_seconds`` caps its CPU time (``RLIMIT_CPU``), a backstop behind any wall-clock
    limit the caller keeps.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold credentials
    cwd: str = HOME
    files: Mapping[str, bytes] = field(default_factory=dict)
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    cpu_seconds: int | None = None
    stdin: bool = False  # a pipe the caller writes to; else /dev/null
    last: bool = False  # the sandbox ends with it: its init exits once it has ended


@dataclass(frozen=True)
class Mount:
    """The host directory ``source``, walked down ``names``, bound at ``target``.

    ``source`` is trusted: the server made it. ``names`` are single path components below
    it (a sub-directory, for ``sub_paths``), written by sandboxed code, so each is opened
    without following symlinks: a symlink on the way fails instead of mounting what it
    points at.
    """

    source: Path
    names: tuple[str, ...]
    target: str
    read_only: bool

    def __post_init__(self) -> None:
        for name in self.names:
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                raise ValueError(f"mount path component {name!r} is not a plain name")
        path = PurePosixPath(self.target)
        if not path.is_absolute() or str(path) != self.target or ".." in path.parts:
            raise ValueError(f"mount target {self.target!r} is not a normalised absolute path")
        if path.parts[:2] != ("/", DATA[1:]) or len(path.parts) < 3 or "\0" in self.target:
            raise ValueError(f"mount target {self.target!r} must lie below {DATA}")


def volume_mounts(
    volumes: Iterable[tuple[str, Path, bool]], sub_paths: Sequence[str] = ()
) -> tuple[Mount, ...]:
    """Mounts for ``(slug, host directory, read_only)`` volumes at ``/data/<slug>``.

    Without ``sub_paths`` every volume is mounted whole. With them, only the listed
    directories (``/data/<slug>/a/b``; ``/data/<slug>`` is the whole volume) are, each at
    its own path: the rest of a volume, and volumes not named, stay out of sight. A path
    inside another listed one adds nothing and is dropped. Raises ``ValueError`` for a
    path outside ``/data/<slug>`` of a given volume.
    """
    by_slug = {slug: (source, read_only) for slug, source, read_only in volumes}
    if not sub_paths:
        return tuple(
            Mount(source, (), f"{DATA}/{slug}", read_only)
            for slug, (source, read_only) in sorted(by_slug.items())
        )
    wanted: set[tuple[str, ...]] = set()
    for sub_path in sub_paths:
        parts = PurePosixPath(sub_path).parts
        if parts[:2] != ("/", DATA.strip("/")) or len(parts) < 3 or parts[2] not in by_slug:
            raise ValueError(f"{sub_path} is not in a volume mounted at {DATA}/<slug>")
        wanted.add(parts[2:])
    kept = [p for p in wanted if not any(p[: len(q)] == q for q in wanted if q != p)]
    mounts = []
    for slug, *names in sorted(kept):
        source, read_only = by_slug[slug]
        mounts.append(Mount(source, tuple(names), "/".join((DATA, slug, *names)), read_only))
    return tuple(mounts)
