"""OCI images in, root filesystems out, through two well-kept tools rather than a tar walker
of our own:

- **skopeo** copies any source (an OCI layout directory, an OCI archive, a ``docker save``
  archive, a registry reference) into an OCI layout of ours, checking every blob against
  its digest, so the rest reads one format;
- **umoci** ``unpack --rootless`` applies the layers in order (whiteouts and opaque
  directories included), resolving every name and link target inside the root
  (``..``, absolute names, links pointing outside) and never making device nodes or
  changing owners.

Both run from argument vectors, never a shell; what they say on failure is passed on.
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as Malformed

from baponi_core._errors import RuntimeRefused

TAG = "image"  # the one image of the layouts we make
TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:", "docker://")
REMOTE = "docker://"
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
MAX_JSON_BYTES = 4 << 20
TOOL_TIMEOUT_S = 3600.0


class _Settings(BaseModel):
    """The part of an image's config a runtime uses (the OCI image spec's ``config``)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    env: list[str] = Field(default_factory=list, alias="Env")
    working_dir: str = Field(default="", alias="WorkingDir")
    entrypoint: list[str] = Field(default_factory=list, alias="Entrypoint")
    labels: dict[str, str] = Field(default_factory=dict, alias="Labels")


class ImageConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    config: _Settings = Field(default_factory=_Settings)

    def environment(self) -> dict[str, str]:
        env = {}
        for item in self.config.env:
            name, sep, value = item.partition("=")
            if not sep or not name or "\0" in item:
                raise RuntimeRefused(f"the image's Env holds {item[:64]!r}, not NAME=VALUE")
            env[name] = value
        return env


class _Descriptor(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    media_type: str = Field(default="", alias="mediaType")
    digest: str


class _Index(BaseModel):
    model_config = ConfigDict(extra="ignore")

    manifests: list[_Descriptor]


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    config: _Descriptor


def reference(source: str) -> str:
    """The skopeo reference of ``source``: one with a transport as it is, else a path: a
    directory is an OCI layout, a tar file an OCI archive or a ``docker save`` one."""
    if source.startswith(TRANSPORTS):
        return source
    path = Path(source)
    if path.is_dir():
        return f"oci:{path}"
    if path.is_file():
        return f"{_archive_kind(path)}:{path}"
    raise RuntimeRefused(
        f"{source}: no such directory or file; give an OCI layout directory "
        "(oci:DIR[:TAG]), an archive (oci-archive:FILE, docker-archive:FILE) or an image "
        "reference (docker://REF)"
    )


def _archive_kind(path: Path) -> str:
    """Which archive ``path`` is, from its member names (nothing is extracted)."""
    try:
        with tarfile.open(path) as archive:
            names = {member.name.lstrip("./") for member in archive}
    except (tarfile.TarError, OSError) as exc:
        raise RuntimeRefused(f"{path}: not a tar archive ({exc})") from None
    if "oci-layout" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise RuntimeRefused(f"{path}: neither an OCI archive nor a docker save archive")


def copy(source: str, layout: Path, scratch: Path) -> None:
    """Copy the image ``source`` names into the OCI layout ``layout`` (tag :data:`TAG`).
    A registry is trusted as the host's containers policy says; a local file needs none."""
    policy = [] if source.startswith(REMOTE) else ["--insecure-policy"]
    _tool(
        "skopeo",
        [*policy, "copy", "--quiet", reference(source), f"oci:{layout}:{TAG}"],
        scratch,
        f"cannot read the image {source}",
    )


def unpack(layout: Path, bundle: Path, scratch: Path) -> Path:
    """Unpack the image of ``layout`` into ``bundle``; its root filesystem."""
    _tool(
        "umoci",
        ["unpack", "--rootless", "--image", f"{layout}:{TAG}", str(bundle)],
        scratch,
        "cannot unpack the image",
    )
    return bundle / "rootfs"


def config(layout: Path) -> ImageConfig:
    """The config of the one image in ``layout`` (as skopeo wrote it)."""
    try:
        index = _Index.model_validate_json(_read(layout / "index.json"))
        if len(index.manifests) != 1:
            raise RuntimeRefused("the image layout holds more than one image")
        manifest = _Manifest.model_validate_json(_blob(layout, index.manifests[0].digest))
        return ImageConfig.model_validate_json(_blob(layout, manifest.config.digest))
    except Malformed as exc:
        raise RuntimeRefused(f"the image's manifest or config is malformed: {exc}") from None


def _blob(layout: Path, digest: str) -> bytes:
    match = DIGEST.fullmatch(digest)
    if match is None:
        raise RuntimeRefused(f"unsupported digest {digest[:80]!r}")
    return _read(layout / "blobs" / "sha256" / match.group(1))


def _read(path: Path) -> bytes:
    with open(path, "rb") as file:
        data = file.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise RuntimeRefused(f"{path.name} is too large for an image manifest or config")
    return data


def _tool(program: str, args: list[str], scratch: Path, failure: str) -> None:
    """Run ``program``; a failure raises RuntimeRefused with the last thing it said. Its
    temporary files go to ``scratch``, inside the runtimes directory."""
    env = {**os.environ, "TMPDIR": str(scratch)}  # the operator's own (registry logins)
    try:
        done = subprocess.run(
            [program, *args],
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise RuntimeRefused(f"{program} is not installed: apt-get install {program}") from None
    except subprocess.TimeoutExpired:
        raise RuntimeRefused(
            f"{failure}: {program} took longer than {TOOL_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0:
        said = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise RuntimeRefused(f"{failure}: {said[-1] if said else f'{program} failed'}")
