"""OCI images made by the tests themselves, without Docker: layers as tar files written with
``tarfile``, the config, manifest and index as JSON, every blob named by its sha256.

``Entry`` is one layer member, hostile ones included (a name with ``..``, a link outside,
a device); ``write_layout`` makes an OCI image layout directory, ``oci_archive`` and
``docker_archive`` the two archive forms of the same image.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path(shutil.which("busybox") or "/usr/bin/busybox")
# The applets the tests' scripts use, each a link to /bin/busybox.
APPLETS = ("sh", "cat", "ls", "find", "stat", "test", "echo", "pwd", "sleep", "id", "env")
SH = ["/bin/busybox", "sh"]  # the bash language's interpreter in these images


@dataclass(frozen=True)
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    link: str = ""  # the target of a symlink or hard link
    device: tuple[int, int] = (0, 0)

    def add_to(self, archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(self.name)
        info.type, info.mode, info.linkname = self.kind, self.mode, self.link
        info.devmajor, info.devminor = self.device
        info.size = len(self.data) if self.kind == tarfile.REGTYPE else 0
        archive.addfile(info, io.BytesIO(self.data) if info.size else None)


def directory(name: str) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=0o755)


def file(name: str, data: bytes | str, mode: int = 0o644) -> Entry:
    return Entry(name, data=data.encode() if isinstance(data, str) else data, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, link=target)


def busybox_layer() -> list[Entry]:
    """A root with a static busybox and links for its applets: enough for a shell."""
    return [
        directory("bin"),
        file("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        *(symlink(f"bin/{applet}", "busybox") for applet in APPLETS),
    ]


@dataclass(frozen=True)
class Image:
    layers: list[list[Entry]]
    env: Mapping[str, str]
    workdir: str = ""
    labels: Mapping[str, str] | None = None
    entrypoint: tuple[str, ...] = ()

    def config(self, diff_ids: list[str]) -> bytes:
        settings: dict[str, object] = {"Env": [f"{k}={v}" for k, v in self.env.items()]}
        if self.workdir:
            settings["WorkingDir"] = self.workdir
        if self.entrypoint:
            settings["Entrypoint"] = list(self.entrypoint)
        settings["Labels"] = dict(
            self.labels
            if self.labels is not None
            else {"org.baponi.interpreter.bash": json.dumps(SH)}
        )
        return json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": settings,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()


def _tar(entries: Iterable[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            entry.add_to(archive)
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layout(image: Image, where: Path, tag: str = "latest") -> Path:
    """``image`` as an OCI image layout directory at ``where``."""
    blobs = where / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = _digest(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layers = [_tar(layer) for layer in image.layers]
    described = [blob(layer, "application/vnd.oci.image.layer.v1.tar") for layer in layers]
    config = blob(
        image.config([_digest(layer) for layer in layers]),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": described,
    }
    listed = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    listed["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (where / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [listed]}))
    (where / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return where


def oci_archive(layout: Path, archive: Path) -> Path:
    """The layout directory as an OCI archive (a tar of it)."""
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return archive


def docker_archive(image: Image, archive: Path) -> Path:
    """``image`` as ``docker save`` writes one."""
    layers = [_tar(layer) for layer in image.layers]
    config = image.config([_digest(layer) for layer in layers])
    with tarfile.open(archive, "w") as tar:

        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        names = [f"{i}/layer.tar" for i in range(len(layers))]
        for name, data in zip(names, layers, strict=True):
            put(name, data)
        put("config.json", config)
        manifest = [{"Config": "config.json", "RepoTags": ["test/image:latest"], "Layers": names}]
        put("manifest.json", json.dumps(manifest).encode())
    return archive
