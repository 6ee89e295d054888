"""What a sandbox sees of /proc: its own processes, and the few host-wide files runtimes read.

bwrap mounts a fresh proc for the sandbox's pid namespace, so /proc/<pid> holds only the
sandbox's own processes. The host-wide entries beside them are the host's, though; those
that tell the host apart (its boot line, kernel build, disks, devices, interrupts, key
rings, file locks, boot id) and that no runtime needs are masked: files by /dev/null bound
over them (they read empty), directories by an empty read-only tmpfs.

Kept, because runtimes read them: ``cpuinfo``, ``stat`` (glibc counts CPUs from it when
there is no /sys; node's ``os.cpus()``), ``meminfo`` and ``vmstat`` (``os.totalmem()``,
psutil), ``uptime``, ``loadavg``, ``version``, ``filesystems``, ``cgroups`` (the JVM's
container detection), /proc/sys (read-only; glibc reads ``vm/overcommit_memory`` and
``kernel/ngroups_max``; ``net/`` is the sandbox's own namespace), ``sysvipc`` (its own IPC
namespace). They show host-wide figures (memory, CPUs, load), not the host's identity.
"""

from __future__ import annotations

import os
from functools import cache

MASKED_FILES = (
    "cmdline",  # the host's boot line (here: the VM agent's ports and flags)
    "config.gz",
    "kallsyms",
    "keys",
    "key-users",
    "iomem",
    "ioports",
    "interrupts",
    "softirqs",
    "buddyinfo",
    "pagetypeinfo",
    "zoneinfo",
    "slabinfo",
    "vmallocinfo",
    "diskstats",
    "partitions",
    "swaps",
    "locks",  # every lock on the host: device and inode numbers
    "devices",
    "misc",
    "dma",
    "consoles",
    "crypto",
    "execdomains",
    "mtrr",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kcore",
    "kmsg",
    "kpagecgroup",
    "kpagecount",
    "kpageflags",
    "sysrq-trigger",
    "sys/kernel/random/boot_id",  # the same in every sandbox of the host: ties tenants
)
MASKED_DIRS = ("acpi", "asound", "bus", "driver", "fs", "irq", "pressure", "scsi", "tty")
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
            argv += ["--remount-ro", target]
    return argv
