"""The sandbox's user and what of /etc is generated for it: the sandbox user's ids, its
base environment, and the /etc files that hide the host.

On the host runtime (:mod:`image`) the generated /etc is the whole of /etc, with a short
allow-list of host /etc files copied in; on an image runtime the image's /etc is used,
with the :data:`HIDING` files of the generated one bound over it. Either way nothing that
names host users, hosts, credentials or the server's configuration reaches a sandbox.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

# The owner of every stored file sandboxes reach (thread homes, volumes) when the server
# is root. No sandbox runs as it: each has a host uid of its own (:mod:`uids`) and sees
# these files as its own through an id-mapped mount (:mod:`idmap`).
STORAGE_UID = 64000
SANDBOX_UID = 1000  # the sandbox user as seen inside the sandbox
SANDBOX_USER = "baponi"
HOME = "/home/baponi"

# The environment every process starts with is made of three parts (:func:`base_env`):
# these defaults, which a runtime image's Env may change; the image's Env; and the sandbox
# user's identity, which nothing changes. A request's variables are added to it.
DEFAULT_ENV = {
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "PYTHONUNBUFFERED": "1",
    "NPM_CONFIG_PREFIX": f"{HOME}/.npm-global",
    "NPM_CONFIG_GLOBALCONFIG": "/etc/npmrc",
    "MPLBACKEND": "Agg",
}
IDENTITY_ENV = {"HOME": HOME, "USER": SANDBOX_USER, "LOGNAME": SANDBOX_USER, "TMPDIR": "/tmp"}
USER_BIN = f"{HOME}/.local/bin:{HOME}/.npm-global/bin"  # user installs, in the thread home
HOST_PATH = "/usr/bin:/bin"  # the host runtime's PATH; also an image's without one
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env(image_env: Mapping[str, str]) -> dict[str, str]:
    """What every process of a sandbox on a runtime with ``image_env`` starts with: user
    installs first on the image's PATH."""
    path = image_env.get("PATH") or IMAGE_PATH
    return {**DEFAULT_ENV, **image_env, **IDENTITY_ENV, "PATH": f"{USER_BIN}:{path}"}


BASE_ENV = base_env({"PATH": HOST_PATH})  # the host runtime's

# Copied from the host when present: they describe the software in /usr, not the host.
HOST_ETC_FILES = ("ld.so.cache", "mime.types", "protocols", "services", "localtime")
# Bound read-only when present: CA certificates and Debian's alternatives symlinks.
HOST_ETC_DIRS = ("ssl", "ca-certificates", "alternatives")

GENERATED = {
    "passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:Baponi sandbox:{HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hostname": "sandbox\n",
    "hosts": "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    "resolv.conf": "",
    # The host runtime only: an image brings its own (the rest of its /etc is its own).
    # Debian marks its Python as externally managed; user installs go to the thread home.
    "pip.conf": (
        "[global]\nbreak-system-packages = true\ndisable-pip-version-check = true\n"
        "[install]\nuser = true\n"
    ),
    "npmrc": "fund=false\naudit=false\nupdate-notifier=false\n",
}
# The generated files bound over an image's own: users, groups and names of the sandbox.
HIDING = ("passwd", "group", "hostname", "hosts", "nsswitch.conf", "resolv.conf")


def build_etc(target: Path, host_etc: Path = Path("/etc")) -> list[str]:
    """Write the sandbox /etc into ``target``, a directory of the runtime's own that is
    replaced whole; return the host /etc dirs to bind read-only."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True, mode=0o755)
    for name, text in GENERATED.items():
        (target / name).write_text(text)
    for name in HOST_ETC_FILES:
        source = host_etc / name
        if source.is_file():
            shutil.copyfile(source, target / name)  # follows a localtime symlink on purpose
    for path in target.iterdir():
        path.chmod(0o644)
    binds = []
    for name in HOST_ETC_DIRS:
        if (host_etc / name).is_dir():
            (target / name).mkdir(mode=0o755)
            binds.append(name)
    return binds
