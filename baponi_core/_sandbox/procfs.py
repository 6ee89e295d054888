"""What a sandbox sees of /proc: its own processes, and the few host-wide files runtimes read.

bwrap mounts a fresh proc for the sandbox's pid namespace, so /proc/<pid> holds only the
sandbox's own processes. The host-wide entries beside them are the host's, though; those
that tell the host apart (its boot line, boot id, kernel symbols and modules, file locks,
disks, devices) and that no runtime needs are masked: files by /dev/null bound over them
(bound without device access, so reading one is EACCES), directories by an empty tmpfs.

Kept, because runtimes read them: ``cpuinfo``, ``stat`` (glibc counts CPUs from it when
there is no /sys; node's ``os.cpus()``), ``meminfo`` and ``vmstat`` (``os.totalmem()``,
psutil), ``uptime``, ``loadavg``, ``version``, ``filesystems``, ``cgroups`` (the JVM's
container detection), /proc/sys (read-only; glibc reads ``vm/overcommit_memory`` and
``kernel/ngroups_max``; ``net/`` is the sandbox's own namespace), ``sysvipc`` (its own IPC
namespace). They show host-wide figures (memory, CPUs, load), not the host's identity.
So do the static kernel tables left (devices, crypto, consoles, iomem with its addresses
zeroed...), the same on every host of this kernel, and the host-wide activity counters
(interrupts, diskstats, pressure/): masking those would change nothing while ``stat`` and
``vmstat``, which runtimes read, show host-wide activity too. ``tests/isolation/readable_proc.txt``
lists every file a sandbox can read.
"""

from __future__ import annotations

import os
from functools import cache

# Only what the sandbox user could read and what names the host itself (the others, kcore,
# kmsg, slabinfo..., are the host root's alone already): every mask costs bwrap a bind, of
# roughly half a millisecond, at every launch.
MASKED_FILES = (
    "cmdline",  # the host's boot line (here: the VM agent's ports and flags)
    "sys/kernel/random/boot_id",  # the same in every sandbox of the host: ties tenants
    "locks",  # every file lock on the host, with device and inode numbers
    "kallsyms",  # the kernel's symbols and the host's modules (addresses zeroed, names not)
)
# PCI devices; the host's disks and their ext4 mount options. Writable by no one but their
# owner, the sandbox user, and only up to EMPTY_DIR_BYTES (a remount read-only would cost
# a bind each).
MASKED_DIRS = ("bus", "fs")
EMPTY_DIR_BYTES = 4096  # a tmpfs of size 0 would be unbounded


@cache
def masks(proc: str = "/proc") -> list[str]:
    """bwrap arguments masking what exists of the lists on this kernel (a mount target
    must exist), to follow ``--proc /proc``."""
    argv: list[str] = []
    for name in MASKED_FILES:
        if os.path.isfile(f"{proc}/{name}"):
            argv += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    for name in MASKED_DIRS:
        if os.path.isdir(f"{proc}/{name}") and not os.path.islink(f"{proc}/{name}"):
            target = f"/proc/{name}"
            argv += ["--perms", "0555", "--size", str(EMPTY_DIR_BYTES), "--tmpfs", target]
    return argv
