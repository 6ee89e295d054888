"""The port ``CodeInterpreter.create`` probes (44771): open, held by the sandbox's init,
in a sandbox whose runtime has a Jupyter kernel; closed in one whose runtime has none,
or whose probe gives no answer. Real sandboxes of this test process's own runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import anyio.from_thread
import pytest

from baponi_core._runtimes import Runtimes
from baponi_core._sandbox import Command, Sandbox, SandboxRuntime, Shape
from baponi_core._sandbox.image import HOST, Runtime
from baponi_core._sandbox.rootfs import BASE_ENV
from baponi_core._sandboxes.kernels import JUPYTER_PORT, Kernels
from tests.harness import runtime_on_a_thread, shared_runtimes

PROBE = (
    f"(exec 3<>/dev/tcp/127.0.0.1/{JUPYTER_PORT}) 2>/dev/null && echo open || echo shut; "
    "set -- /proc/[0-9]*; echo $#"  # by the shell itself: the init and this shell
)


@pytest.fixture(scope="module")
def runtime(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[anyio.from_thread.BlockingPortal, SandboxRuntime]]:
    with runtime_on_a_thread(tmp_path_factory.mktemp("kernels") / "run", []) as made:
        yield made


def port_in(
    made: tuple[anyio.from_thread.BlockingPortal, SandboxRuntime],
    kernels: Kernels,
    image: Runtime,
) -> tuple[str, int]:
    """A sandbox of ``image`` made as a create makes it: whether the port is open in it,
    and how many processes run there when it is probed."""
    portal, runtime = made

    async def scenario() -> tuple[str, int]:
        sandbox: Sandbox = await runtime.prepare(Shape(runtime=image), ahead=False)
        try:
            await sandbox.attach(None)
            await kernels.listen(sandbox)
            process = await sandbox.start(Command(("bash", "-c", PROBE), BASE_ENV))
            out = bytearray()
            while chunk := await process.stdout.receive():
                out += chunk
            await process.wait()
            process.close()
            said, count = out.decode().split()
            return said, int(count)
        finally:
            await sandbox.close()

    return portal.call(scenario)


def test_a_runtime_with_a_kernel_has_the_port_open_with_no_process_of_its_own(
    runtime: tuple[anyio.from_thread.BlockingPortal, SandboxRuntime],
) -> None:
    image = Runtimes(shared_runtimes()).get("default")
    kernels = Kernels()
    assert port_in(runtime, kernels, image) == ("open", 2)  # the first: its runtime probed
    assert port_in(runtime, kernels, image) == ("open", 2)  # the next: the answer kept


def test_a_runtime_without_a_kernel_has_the_port_closed(
    runtime: tuple[anyio.from_thread.BlockingPortal, SandboxRuntime],
) -> None:
    assert port_in(runtime, Kernels(), HOST)[0] == "shut"  # the host's python3: no ipykernel


def test_a_probe_that_gives_no_answer_leaves_the_port_closed(
    runtime: tuple[anyio.from_thread.BlockingPortal, SandboxRuntime],
) -> None:
    image = Runtimes(shared_runtimes()).get("default")
    # A Python that is killed, whatever it would say: neither yes nor no.
    killed = ("/bin/sh", "-c", "kill -9 $$", "sh")
    dying = dataclasses.replace(image, interpreters=(("python", killed),))
    kernels = Kernels()
    assert port_in(runtime, kernels, dying)[0] == "shut"
    assert port_in(runtime, kernels, image)[0] == "open"  # its own answer
