"""The kernel bridge: the program that runs *inside* a long-lived sandbox, with the
runtime's own Python, and owns one code context's Jupyter kernel (``ipykernel``). The
server never imports it: it writes this file into the sandbox (``/run/baponi/``) and
starts it once per code context.

``python3 -I bridge.py`` starts a kernel on ZeroMQ's ``ipc`` transport (unix sockets in
a private directory under ``/tmp``: nothing listens on the network), then speaks JSON
lines: requests in on stdin (``{"op": "execute", "code": ...}``, ``{"op": "interrupt"}``;
its end shuts the kernel down), the kernel's messages out on stdout (``ready``,
``status``, ``count``, ``stream``, ``data``, ``error``, ``reply``, ``died``). The server
trusts none of it: user code may kill or replace this program.

Standard library and ``jupyter_client`` only (its ``zmq`` too), imported inside the
functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

MAX_DATA = 3 << 20  # one result (a figure, base64), under the server's bound on a line
CHUNK = 1 << 16  # stream text is sent in pieces of at most this many characters
MAX_NAME = 1000  # an exception's name (the server takes 1024)
MAX_FRAMES = 40  # the last frames of a traceback, each at most CHUNK characters
POLL_S = 0.25  # how often a wait for the kernel checks that it is still alive
READY_S = 120.0  # for the kernel's first answer (a cold start on a loaded machine)
INLINE = "module://matplotlib_inline.backend_inline"  # figures as image/png results
KERNEL_OPTIONS = (
    "--colors=nocolor",  # tracebacks in plain text
    # No history database: it dies with the context anyway, and its SQLite writes were
    # half of the kernel's CPU for a small run (In, Out and %history still work).
    "--HistoryManager.enabled=False",
)


def emit(kind: str, **fields: Any) -> None:
    """One line out; it leaves at the next flush (before each wait in
    :meth:`Bridge.serve`), so that what comes at once leaves in one write."""
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")


def die_with_parent() -> None:
    """In the kernel, before its exec: SIGKILL when this program ends, however it ends."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class Bridge:
    """One kernel, driven from one thread: a poll on stdin and the kernel's iopub and
    shell sockets, one run at a time (the server asks for one at a time)."""

    def __init__(self) -> None:
        import subprocess
        import tempfile

        from jupyter_client.blocking.client import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        scratch = tempfile.mkdtemp(prefix="baponi-kernel-")
        connection, _ = write_connection_file(
            os.path.join(scratch, "kernel.json"), transport="ipc", ip=os.path.join(scratch, "k")
        )
        env = {
            **os.environ,
            "MPLBACKEND": INLINE,
            "IPYTHONDIR": os.path.join(scratch, "ipython"),
            "JPY_PARENT_PID": str(os.getpid()),  # ipykernel's own watch on this process
        }
        self.kernel = subprocess.Popen(
            [sys.executable, "-m", "ipykernel_launcher", "-f", connection, *KERNEL_OPTIONS],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # never this program's pipes: they are the server's
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group, for the interrupt
            preexec_fn=die_with_parent,  # only this thread runs yet: safe
        )
        self.client = BlockingKernelClient(connection_file=connection)
        self.client.load_connection_file()
        self.client.start_channels()
        self.pending: list[str] = []  # code asked for, not started yet
        self.run: dict[str, Any] | None = None  # msg_id, and whether idle and reply came

    def alive(self) -> bool:
        return self.kernel.poll() is None

    def ready(self) -> bool:
        import time

        deadline = time.monotonic() + READY_S
        while self.alive() and time.monotonic() < deadline:
            try:
                self.client.wait_for_ready(timeout=POLL_S * 4)
                return True
            except RuntimeError:
                continue
        return False

    def serve(self) -> None:
        """Until stdin ends (the server closed it) or the kernel dies."""
        import zmq

        iopub, shell = self.client.iopub_channel, self.client.shell_channel
        poller = zmq.Poller()
        for source in (0, iopub.socket, shell.socket):
            poller.register(source, zmq.POLLIN)
        stdin = b""
        while True:
            if self.run is None and self.pending:
                msg_id = self.client.execute(self.pending.pop(0), allow_stdin=False)
                self.run = {"msg_id": msg_id, "idle": False, "reply": None}
            sys.stdout.flush()
            ready = dict(poller.poll(POLL_S * 1000))
            if not ready and not self.alive():
                emit("died", message="the kernel ended (killed from inside?)")
                return
            if 0 in ready:
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    return
                *lines, stdin = (stdin + chunk).split(b"\n")
                for line in lines:
                    self.request(line)
            while iopub.socket.poll(0):
                self.forward(self.receive(iopub.socket))
            while shell.socket.poll(0):
                self.replied(self.receive(shell.socket))
            if self.run is not None and self.run["idle"] and self.run["reply"] is not None:
                content = self.run["reply"]["content"]
                emit("reply", status=content.get("status"), count=content.get("execution_count"))
                self.run = None

    def receive(self, socket: Any) -> dict[str, Any]:
        """One message, its signature checked, its parts read as JSON: what
        ``Session.deserialize`` does but for its parsing of every date, most of this
        program's time on a small run."""
        import hmac

        _, frames = self.client.session.feed_identities(socket.recv_multipart())
        signature, *parts = frames[:5]
        if not hmac.compare_digest(signature, self.client.session.sign(parts)):
            return {}  # not the kernel's: dropped
        header, parent, _, content = (json.loads(part) for part in parts)
        return {"msg_type": header["msg_type"], "parent_header": parent, "content": content}

    def request(self, line: bytes) -> None:
        import signal

        try:
            request = json.loads(line)
        except ValueError:
            return
        if request.get("op") == "interrupt":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.kernel.pid, signal.SIGINT)
        elif request.get("op") == "execute":
            self.pending.append(str(request.get("code", "")))

    def mine(self, message: dict[str, Any]) -> bool:
        parent = message.get("parent_header", {}).get("msg_id")
        return self.run is not None and parent == self.run["msg_id"]

    def replied(self, message: dict[str, Any]) -> None:
        if self.run is not None and self.mine(message):
            self.run["reply"] = message

    def forward(self, message: dict[str, Any]) -> None:
        """Say what one iopub message of the run means."""
        if self.run is None or not self.mine(message):
            return
        kind, content = message["msg_type"], message["content"]
        if kind == "status":
            emit("status", state=content["execution_state"])
            self.run["idle"] = content["execution_state"] == "idle"
        elif kind == "execute_input":
            emit("count", count=content["execution_count"])
        elif kind == "stream":
            text = content["text"]
            for start in range(0, len(text), CHUNK):
                emit("stream", name=content["name"], text=text[start : start + CHUNK])
        elif kind in ("execute_result", "display_data"):
            line = json.dumps({"kind": "data", "data": content["data"]})
            if len(line) > MAX_DATA:  # the server would end the context for it
                note = f"[a result of {len(line) >> 20} MiB was dropped: past {MAX_DATA >> 20}]\n"
                emit("stream", name="stderr", text=note)
            else:
                sys.stdout.write(line + "\n")
        elif kind == "error":  # cut to what the server takes (an exception of any size)
            emit(
                "error",
                ename=content["ename"][:MAX_NAME],
                evalue=content["evalue"][:CHUNK],
                traceback=[frame[:CHUNK] for frame in content["traceback"][-MAX_FRAMES:]],
            )

    def close(self) -> None:
        import signal

        self.client.stop_channels()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.kernel.pid, signal.SIGKILL)


def main(argv: list[str]) -> None:
    bridge = Bridge()
    try:
        if bridge.ready():
            emit("ready")
            bridge.serve()
        else:
            emit("died", message="the kernel did not start")
        sys.stdout.flush()
    finally:
        bridge.close()


if __name__ == "__main__":
    main(sys.argv[1:])
