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
the answer every other sandbox of that runtime gets. An answer that is neither yes nor no
(the probe was killed, or failed to start) is not kept: that sandbox goes without.
"""

from __future__ import annotations

import logging

import anyio

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
        self._asking: dict[Runtime, anyio.Lock] = {}  # one probe per runtime at a time

    async def listen(self, sandbox: Sandbox) -> None:
        """Have ``sandbox`` listen on :data:`JUPYTER_PORT` if its runtime has a kernel.
        Call it before the sandbox runs anything of its user's."""
        if await self._has_kernel(sandbox):
            await sandbox.listen(JUPYTER_PORT)

    async def _has_kernel(self, sandbox: Sandbox) -> bool:
        runtime = sandbox.shape.runtime
        python = runtime.interpreter("python")
        if python is None:
            return False
        async with self._asking.setdefault(runtime, anyio.Lock()):
            known = self._known.get(runtime)
            if known is None:
                status = await _probe(sandbox, python)
                if status not in (HAS, HAS_NOT):
                    log.warning(
                        "runtime %s: no answer to the kernel probe (%s)", runtime.name, status
                    )
                    return False
                known = self._known[runtime] = status == HAS
        return known


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
    await process.signal(9)
    return None
