"""The port ``CodeInterpreter.create`` probes (44771): open, held by the sandbox's init,
in a sandbox whose runtime has a Jupyter kernel; closed in one whose runtime has none,
or whose probe gives no answer. Real sandboxes of this test process's own runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import anyio.from_thread
import pytest
from anyio.abc import TaskGroup

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


def ports_in(
    made: tuple[anyio.from_thread.BlockingPortal, SandboxRuntime],
    kernels: Kernels,
    image: Runtime,
    count: int = 1,
) -> list[tuple[str, int]]:
    """``count`` sandboxes of ``image`` made at once, as creates make them: in each,
    whether the port is open, and how many processes run there when it is probed."""
    portal, runtime = made

    async def one(later: TaskGroup) -> Sandbox:
        sandbox: Sandbox = await runtime.prepare(Shape(runtime=image), ahead=False)
        await sandbox.attach(None)
        await kernels.listen(sandbox, later)
        return sandbox

    async def probed(sandbox: Sandbox) -> tuple[str, int]:
        process = await sandbox.start(Command(("bash", "-c", PROBE), BASE_ENV))
        out = bytearray()
        while chunk := await process.stdout.receive():
            out += chunk
        await process.wait()
        process.close()
        said, processes = out.decode().split()
        return said, int(processes)

    async def scenario() -> list[tuple[str, int]]:
        sandboxes: list[Sandbox] = []
        try:
            async with anyio.create_task_group() as later:  # left once all were told

                async def make() -> None:
                    sandboxes.append(await one(later))

                for _ in range(count):
                    later.start_soon(make)
            return [await probed(sandbox) for sandbox in sandboxes]
        finally:
            for sandbox in sandboxes:
                await sandbox.close()

    return portal.call(scenario)


def port_in(
    made: tuple[anyio.from_thread.BlockingPortal, SandboxRuntime],
    kernels: Kernels,
    image: Runtime,
) -> tuple[str, int]:
    return ports_in(made, kernels, image)[0]


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


def test_sandboxes_made_while_the_probe_runs_are_told_once_it_answers(
    runtime: tuple[anyio.from_thread.BlockingPortal, SandboxRuntime],
) -> None:
    image = Runtimes(shared_runtimes()).get("default")
    assert ports_in(runtime, Kernels(), image, count=3) == [("open", 2)] * 3
    assert ports_in(runtime, Kernels(), HOST, count=3) == [("shut", 2)] * 3
