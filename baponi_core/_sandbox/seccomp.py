"""The seccomp filter, compiled once to a BPF program that bwrap loads just before exec.

The default action is ALLOW: a deny-list names what no sandboxed program needs and what
opens the kernel up (tracing, mounting, namespaces, key rings, BPF, module loading...).
Syscalls that runtimes probe for get an errno instead of a kill, so they fall back cleanly.
Socket families are the exception, an allowlist: the few a sandbox may open, whatever
families the kernel has or will have.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from functools import cache

import pyseccomp as sc

KILLED = (
    "ptrace process_vm_readv process_vm_writev pidfd_getfd kcmp "
    "mount umount2 pivot_root chroot move_mount open_tree fsopen fsconfig fsmount fspick "
    "mount_setattr unshare setns keyctl add_key request_key bpf perf_event_open userfaultfd "
    "fanotify_init kexec_load kexec_file_load reboot init_module finit_module delete_module "
    "acct swapon swapoff syslog iopl ioperm quotactl nfsservctl lookup_dcookie "
    "open_by_handle_at name_to_handle_at settimeofday clock_settime clock_adjtime adjtimex "
    "sethostname setdomainname vhangup uselib ustat sysfs _sysctl"
).split()

# Probed by glibc (clone3) and libuv (io_uring): ENOSYS makes them fall back.
NOT_IMPLEMENTED = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")

CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)

# The only socket families a sandbox may open: everything else, whether or not the kernel
# has it (AF_VSOCK reaches the VM's host, which network namespaces do not cover; RDS, TIPC,
# SCTP, DCCP, CAN, AF_ALG, AF_KEY...), is EAFNOSUPPORT, as from a kernel without it.
AF_NETLINK = 16
ALLOWED_FAMILIES = (
    socket.AF_UNIX,
    socket.AF_INET,
    socket.AF_INET6,
    # NETLINK_ROUTE only (protocol 0), on the sandbox's own network namespace (just lo):
    # glibc's getifaddrs and if_nameindex use it, so os.networkInterfaces() in node and
    # socket.if_nameindex() in Python work.
    AF_NETLINK,
)
FAMILY_CALLS = ("socket", "socketpair")
# Raw and SOCK_PACKET sockets of the IP families need CAP_NET_RAW, which the sandbox has
# not; refused here too, whatever a kernel would allow.
SOCK_TYPE_MASK, SOCK_RAW, SOCK_PACKET = 0xF, 3, 10
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
ADDR_NO_RANDOMIZE = 0x0040000
LOW32 = 0xFFFFFFFF


@cache
def program() -> bytes:
    """The compiled filter for the native architecture (other ABIs are killed)."""
    f = sc.SyscallFilter(sc.ALLOW)
    for name in KILLED:
        _add(f, sc.KILL_PROCESS, name)
    for name in NOT_IMPLEMENTED:
        _add(f, sc.ERRNO(errno.ENOSYS), name)
    for flag in CLONE_NAMESPACE_FLAGS:
        f.add_rule(sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for call in FAMILY_CALLS:
        _families(f, call)
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(sc.KILL_PROCESS, "ioctl", sc.Arg(1, sc.MASKED_EQ, LOW32, request))
    f.add_rule(
        sc.ERRNO(errno.EPERM),
        "personality",
        sc.Arg(0, sc.MASKED_EQ, ADDR_NO_RANDOMIZE, ADDR_NO_RANDOMIZE),
    )
    fd = os.memfd_create("baponi-seccomp")
    try:
        with open(fd, "wb", closefd=False) as out:
            f.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        return _read_all(fd)
    finally:
        os.close(fd)


def _families(f: sc.SyscallFilter, call: str) -> None:
    """``call`` refuses every family but the allowed ones. libseccomp compares one argument
    once per rule, so the refused values are listed one by one below the highest allowed
    family, and as a range above it (full 64-bit compares: upper bits cannot sneak an
    allowed value past)."""
    refused = sc.ERRNO(errno.EAFNOSUPPORT)
    top = max(ALLOWED_FAMILIES)
    for family in range(top):
        if family not in ALLOWED_FAMILIES:
            f.add_rule(refused, call, sc.Arg(0, sc.EQ, family))
    f.add_rule(refused, call, sc.Arg(0, sc.GT, top))
    f.add_rule(refused, call, sc.Arg(0, sc.EQ, AF_NETLINK), sc.Arg(2, sc.NE, 0))
    for family in (socket.AF_INET, socket.AF_INET6):
        for kind in (SOCK_RAW, SOCK_PACKET):
            f.add_rule(
                sc.ERRNO(errno.EPERM),
                call,
                sc.Arg(0, sc.EQ, family),
                sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, kind),
            )


def _add(f: sc.SyscallFilter, action: int, name: str) -> None:
    # Some names are not syscalls on every architecture (_sysctl, uselib...): skip those.
    with contextlib.suppress(ValueError, RuntimeError, OSError):
        f.add_rule(action, name)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
