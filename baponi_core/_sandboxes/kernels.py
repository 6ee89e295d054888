"""Which runtimes have a Jupyter kernel, and the port the SDK finds open in a sandbox of
one that has.

``CodeInterpreter.create`` checks that something accepts a connection on
``127.0.0.1:JUPYTER_PORT`` inside the sandbox (OpenSandbox's Jupyter server) before it
returns. A sandbox whose runtime has a kernel (``ipykernel`` on its Python's
``sys.path``) has its init listen there (:meth:`Sandbox.listen`), accepting and closing
each connection; a sandbox of a runtime without one has the port closed, and the check
fails, as it should.

Whether a runtime has a kernel is asked of its Python once per runtime generation (a
generation never changes) and server: in the first sandbox made of it, before anything of
its user runs there and with the runtime's own environment alone, so no user can change
the answer every other sandbox of that runtime gets. Sandboxes made while that probe runs
do not wait for it: they are told to listen once it has answered. An answer that is
neither yes nor no (the probe was killed, or failed to start) is not kept: those sandboxes
go without, and the next one made asks again.
"""

from __future__ import annotations

import contextlib
import logging
import signal

import anyio
from anyio.abc import TaskGroup

from baponi_core._sandbox import Command, Sandbox, SandboxError
from baponi_core._sandbox.image import Runtime
from baponi_core._sandbox.warm import base_env

log = logging.getLogger(__name__)

JUPYTER_PORT = 44771  # what CodeInterpreter.create's health check probes
HAS, HAS_NOT = 0, 3  # the probe's exit codes; any other is no answer
PROBE = (
    "import os, sys; sys.exit("
    f"{HAS} if any(os.path.isdir(os.path.join(p, 'ipykernel')) for p in sys.path) else {HAS_NOT})"
)
PROBE_S = 10.0  # a Python start on a loaded machine


class Kernels:
    """What the probes said, per runtime generation, for this server's life."""

    def __init__(self) -> None:
        self._known: dict[Runtime, bool] = {}
        self._asking: dict[Runtime, anyio.Event] = {}  # set once its probe has ended

    async def listen(self, sandbox: Sandbox, later: TaskGroup) -> None:
        """Have ``sandbox`` listen on :data:`JUPYTER_PORT` if its runtime has a kernel.
        Call it before the sandbox runs anything of its user's: it may be the one probed.
        While another sandbox's probe of the same runtime is under way this one does not
        wait for it: it is told in ``later``, once the answer has come."""
        runtime = sandbox.shape.runtime
        python = runtime.interpreter("python")
        if python is None:
            return
        known = self._known.get(runtime)
        if known is None:
            asking = self._asking.get(runtime)
            if asking is not None:
                later.start_soon(self._listen_once_known, sandbox, asking)
                return
            self._asking[runtime] = asking = anyio.Event()
            try:
                known = await self._ask(sandbox, python)
            finally:
                del self._asking[runtime]
                asking.set()
        if known:
            await sandbox.listen(JUPYTER_PORT)

    async def _ask(self, sandbox: Sandbox, python: tuple[str, ...]) -> bool:
        runtime = sandbox.shape.runtime
        status = await _probe(sandbox, python)
        if status not in (HAS, HAS_NOT):
            log.warning("runtime %s: no answer to the kernel probe (%s)", runtime.name, status)
            return False
        self._known[runtime] = status == HAS
        return status == HAS

    async def _listen_once_known(self, sandbox: Sandbox, asking: anyio.Event) -> None:
        await asking.wait()
        if self._known.get(sandbox.shape.runtime) and not sandbox.ended:
            with contextlib.suppress(SandboxError):  # it ended meanwhile
                await sandbox.listen(JUPYTER_PORT)


async def _probe(sandbox: Sandbox, python: tuple[str, ...]) -> int | None:
    """The probe's exit status in ``sandbox``; None if it did not start or end in time."""
    command = Command((*python, "-I", "-c", PROBE), base_env(sandbox.shape))
    try:
        process = await sandbox.start(command)
    except SandboxError as exc:
        log.debug("sandbox %s: the kernel probe did not start: %s", sandbox.id, exc)
        return None
    process.close()  # it says nothing: were it to, it would fail, and be no answer
    with anyio.move_on_after(PROBE_S):
        return await process.wait()
    await process.signal(signal.SIGKILL)
    return None
