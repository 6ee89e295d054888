"""User namespaces that describe an id-mapped mount (``mount_setattr`` with
``MOUNT_ATTR_IDMAP``): through such a mount, files owned on disk by ``inside`` are seen
as owned by ``outside``, and files that ``outside`` makes are stored as ``inside``'s.

A user namespace is made by a process: ``unshare --user`` runs ``cat``, which echoes a
line once it is in its new namespace; the server (root) writes its one-id maps, keeps a
descriptor of the namespace, and lets ``cat`` end. The namespace outlives it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"


def userns(inside: int, outside: int) -> int:
    """A descriptor of a new user namespace that maps ``inside`` (uid and gid) to
    ``outside`` and no other id."""
    helper = subprocess.Popen(
        [UNSHARE, "--user", "--", "cat"],
        env={},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        helper.stdin.write(b"\n")
        helper.stdin.flush()
        if helper.stdout.readline() != b"\n":  # cat runs only once unshare has succeeded
            raise OSError(f"{UNSHARE} --user failed")
        for kind in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{kind}", "w") as out:
                out.write(f"{inside} {outside} 1\n")
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        helper.stdin.close()
        helper.stdout.close()
        helper.wait()
