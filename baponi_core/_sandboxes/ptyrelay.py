"""A terminal inside a sandbox: the program the server starts there for each PTY session,
as ``python3 -c <this file's text> COLS ROWS PROGRAM ARGS...`` (the runtime's Python;
stdlib only, so that any runtime with a ``python3`` has it).

It opens a pseudo-terminal in the sandbox's own devpts (bubblewrap's ``--dev`` mounts a
new instance), starts the program as the leader of a new session on it, and relays: what
the terminal prints goes out on stdout as it is; stdin carries frames from the server,
``kind (1 byte) + length (4 bytes, big-endian) + payload``: data for the terminal,
a resize (``cols``, ``rows``: two unsigned 16-bit big-endian), or a signal number (one
byte) for the terminal's foreground process group, as a keyboard's Ctrl-C reaches it.

It ends with its program, by the same signal or with the same status, so that the
server reads the program's end as this process's. The end of stdin (the server's
delete) hangs the terminal up, then kills what is left of the program's group.

Nothing it says is trusted: the server only copies stdout, bounded, to the client.
"""

import contextlib
import fcntl
import os
import select
import signal
import struct
import sys
import termios
import time

HEADER = struct.Struct(">BI")
DATA, RESIZE, SIGNAL = 0, 1, 2
MAX_FRAME = 1 << 16
MAX_PENDING = 1 << 20  # stdin not yet taken by the terminal; past it stdin waits


def resize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def spawn(cols: int, rows: int, program: list[str]) -> tuple[int, int]:
    master, slave = os.openpty()
    resize(slave, cols, rows)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(master)
            # Python ignores these; an ignored signal stays ignored across exec.
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            os.login_tty(slave)
            os.execvp(program[0], program)  # noqa: S606 (an argv, no shell)
        finally:
            os._exit(127)
    os.close(slave)
    return pid, master


def deliver(master: int, pid: int, signo: int) -> None:
    try:
        os.killpg(os.tcgetpgrp(master), signo)
    except OSError:
        os.kill(pid, signo)


class Frames:
    """Frames from stdin: data queued for the terminal, control applied at once."""

    def __init__(self, master: int, pid: int) -> None:
        self.master, self.pid = master, pid
        self.buffer = b""
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        while len(self.buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self.buffer)
            if length > MAX_FRAME:
                sys.exit("ptyrelay: frame too large")
            end = HEADER.size + length
            if len(self.buffer) < end:
                return
            payload, self.buffer = self.buffer[HEADER.size : end], self.buffer[end:]
            if kind == DATA:
                self.pending += payload
            elif kind == RESIZE and length == 4:
                resize(self.master, *struct.unpack(">HH", payload))
            elif kind == SIGNAL and length == 1:
                deliver(self.master, self.pid, payload[0])


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(pid: int, master: int) -> int:
    """Copy until the terminal is done: its program gone and its output read."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    os.set_blocking(master, False)
    frames = Frames(master, pid)
    while True:
        wanted: list[int] = [master, wake_r]
        if len(frames.pending) < MAX_PENDING:
            wanted.append(0)
        writable = [master] if frames.pending else []
        readable, ready, _ = select.select(wanted, writable, [])
        if wake_r in readable:
            os.read(wake_r, 512)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                drain(master)
                return status
        if master in readable and not copy_out(master):
            return os.waitpid(pid, 0)[1]
        if 0 in readable:
            chunk = os.read(0, 65536)
            if not chunk:
                return hang_up(pid, master)
            frames.feed(chunk)
        if ready:
            try:
                taken = os.write(master, frames.pending[:65536])
            except BlockingIOError:
                taken = 0
            frames.pending = frames.pending[taken:]


def copy_out(master: int) -> bool:
    """One read of the terminal to stdout; False once nothing holds it open."""
    try:
        data = os.read(master, 65536)
    except BlockingIOError:
        return True
    except OSError:  # EIO: its last other end closed
        return False
    if data:
        write_all(1, data)
    return bool(data)


def drain(master: int) -> None:
    """What the terminal still holds once its program has gone."""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # nothing more for now (EAGAIN), or nothing more at all (EIO)
            return
        if not data:
            return
        write_all(1, data)


def hang_up(pid: int, master: int) -> int:
    """Close the terminal (its session gets SIGHUP), then kill the program's group if it
    has not ended within a second."""
    os.close(master)
    for _ in range(10):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def end_as(status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    with contextlib.suppress(OSError, ValueError):  # SIGKILL, SIGSTOP: no handler to reset
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    os._exit(128 - code)


if __name__ == "__main__":
    cols, rows = int(sys.argv[1]), int(sys.argv[2])
    child, terminal = spawn(cols, rows, sys.argv[3:])
    end_as(relay(child, terminal))
