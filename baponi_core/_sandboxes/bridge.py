"""The kernel bridge: the program that runs *inside* a long-lived sandbox, with the
runtime's own Python, and owns one code context's Jupyter kernel (``ipykernel``). The
server never imports it: it writes this file into the sandbox (``/run/baponi/``) and
starts it, once per code context, or once per sandbox as the readiness listener.

``python3 -I bridge.py`` starts a kernel on ZeroMQ's ``ipc`` transport (unix
sockets in a private directory under ``/tmp``: nothing listens on the network), then
speaks JSON lines: requests in on stdin (``{"op": "execute", "code": ...}``,
``{"op": "interrupt"}``; its end shuts the kernel down), the kernel's messages out on
stdout (``ready``, ``status``, ``count``, ``stream``, ``data``, ``error``, ``reply``,
``died``). The server trusts none of it: user code may kill or replace this program.

``python3 -I bridge.py --listen PORT`` is the readiness listener: when the runtime has
a kernel it accepts (and closes) connections on ``127.0.0.1:PORT``, what the SDK's
health check of ``CodeInterpreter.create`` probes; without one it exits at once.

Standard library and ``jupyter_client`` only, imported inside the functions: the
server reads this file as data and never runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

MAX_DATA = 30 << 20  # one result (a figure, base64), under the server's bound on a line
CHUNK = 1 << 16  # stream text is sent in pieces of at most this many characters
POLL_S = 0.25  # how often a wait for the kernel checks that it is still alive
READY_S = 120.0  # for the kernel's first answer (a cold start on a loaded machine)
INLINE = "module://matplotlib_inline.backend_inline"  # figures as image/png results


def emit(kind: str, **fields: Any) -> None:
    """One line out; it leaves at the next flush (before any wait, :meth:`Bridge.next`),
    so that what comes at once leaves in one write."""
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")


def listen(port: int) -> None:
    import importlib.util
    import socket

    if importlib.util.find_spec("ipykernel") is None:
        return
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    while True:
        connection, _ = server.accept()
        connection.close()


def die_with_parent() -> None:
    """In the kernel, before its exec: SIGKILL when this program ends, however it ends."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class Bridge:
    def __init__(self) -> None:
        import queue
        import subprocess
        import tempfile

        from jupyter_client.blocking.client import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
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
            [sys.executable, "-m", "ipykernel_launcher", "-f", connection, "--colors=nocolor"],
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

    def read_requests(self) -> None:
        """On a thread of its own: requests in; an interrupt is done at once."""
        import signal

        for line in sys.stdin:
            try:
                request = json.loads(line)
            except ValueError:
                continue
            if request.get("op") == "interrupt":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.kernel.pid, signal.SIGINT)
            elif request.get("op") == "execute":
                self.queue.put(request)
        self.queue.put(None)

    def serve(self) -> None:
        while (request := self.queue.get()) is not None:
            if not self.execute(str(request.get("code", ""))):
                emit("died", message="the kernel ended (killed from inside?)")
                sys.stdout.flush()
                return

    def execute(self, code: str) -> bool:
        """Run ``code``, its messages out as they come; False once the kernel is gone."""
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False)
        idle = False
        while not idle:
            message = self.next(self.client.get_iopub_msg)
            if message is None:
                return False
            if message.get("parent_header", {}).get("msg_id") == msg_id:
                idle = self.forward(message)
        while True:
            reply = self.next(self.client.get_shell_msg)
            if reply is None:
                return False
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                content = reply["content"]
                emit("reply", status=content.get("status"), count=content.get("execution_count"))
                sys.stdout.flush()
                return True

    def next(self, get: Any) -> dict[str, Any] | None:
        import queue

        timeout = 0.0  # what is there already first; the lines out before waiting
        while self.alive():
            try:
                message: dict[str, Any] = get(timeout=timeout)
                return message
            except queue.Empty:
                sys.stdout.flush()
                timeout = POLL_S
        return None

    def forward(self, message: dict[str, Any]) -> bool:
        """Say what one iopub message of the run means; True at its end (idle)."""
        kind, content = message["msg_type"], message["content"]
        if kind == "status":
            emit("status", state=content["execution_state"])
            return bool(content["execution_state"] == "idle")
        if kind == "execute_input":
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
        elif kind == "error":
            emit(
                "error",
                ename=content["ename"],
                evalue=content["evalue"],
                traceback=content["traceback"],
            )
        return False

    def close(self) -> None:
        import signal

        self.client.stop_channels()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.kernel.pid, signal.SIGKILL)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--listen"]:
        listen(int(argv[1]))
        return
    import threading

    bridge = Bridge()
    try:
        if not bridge.ready():
            emit("died", message="the kernel did not start")
            return
        emit("ready")
        sys.stdout.flush()
        threading.Thread(target=bridge.read_requests, daemon=True).start()
        bridge.serve()
    finally:
        bridge.close()


if __name__ == "__main__":
    main(sys.argv[1:])
